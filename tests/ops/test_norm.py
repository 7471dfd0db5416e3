"""layer_norm, rms_norm (incl. Gemma's add_unit_offset), rms_norm's fused backward and group_norm
against torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from harness import FLOATS, check, rand

TESTED_OPS = {"layer_norm", "rms_norm", "rms_norm_backward", "group_norm"}

SHAPES = [(5,), (2, 3, 8), (1, 1, 4), (3, 1)]


@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_layer_norm(dtype, shape, affine, rng):
    d = shape[-1]
    # an offset mean makes a one-pass E[x^2] - E[x]^2 variance visibly wrong
    x = rand(rng, shape, dtype) + np.asarray(3, kiln.as_dtype(dtype).np_dtype)
    w = rand(rng, (d,), dtype) if affine in ("weight", "both") else None
    b = rand(rng, (d,), dtype) if affine in ("bias", "both") else None
    check("layer_norm", [x, w, b], lambda t, tw, tb: F.layer_norm(t, (d,), tw, tb, eps=1e-5))


@pytest.mark.parametrize("eps", [1e-6, 0.1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_layer_norm_eps(dtype, eps, rng):
    x, w, b = rand(rng, (3, 6), dtype), rand(rng, (6,), dtype), rand(rng, (6,), dtype)
    check("layer_norm", [x, w, b], lambda t, tw, tb: F.layer_norm(t, (6,), tw, tb, eps=eps), eps=eps)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_rms_norm(dtype, shape, weight, unit_offset, eps, rng):
    d = shape[-1]
    x = rand(rng, shape, dtype)
    w = rand(rng, (d,), dtype) if weight else None

    def ref(t, tw):
        if tw is not None and unit_offset:
            tw = 1.0 + tw  # Gemma stores w - 1 and scales by (1 + w), in float32
        return F.rms_norm(t, (d,), tw, eps=eps)
    check("rms_norm", [x, w], ref, eps=eps, add_unit_offset=unit_offset)


@pytest.mark.parametrize("weight", ["none", "weight", "weight_grad", "unit_offset_grad"])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 8), (7, 1)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_rms_norm_backward_matches_torch_autograd(dtype, shape, weight, rng):
    """dx (and dweight) against torch's autograd of F.rms_norm, in float32 for half inputs;
    the weight is 1 + noise so that it matters, dy is random."""
    d = shape[-1]
    x, dy = rand(rng, shape, dtype), rand(rng, shape, dtype)
    w = None if weight == "none" else (1 + 0.5 * rand(rng, (d,), "float64")).astype(x.dtype)
    unit_offset, weight_grad = weight == "unit_offset_grad", weight.endswith("grad")

    def ref(tx, tw, tdy):
        with torch.enable_grad():
            tx = tx.clone().requires_grad_()
            leaves = [tx] + ([tw.clone().requires_grad_()] if weight_grad else [])
            scale = None if tw is None else (1 + leaves[-1] if unit_offset else leaves[-1]) if weight_grad else \
                (1 + tw if unit_offset else tw)
            grads = torch.autograd.grad(F.rms_norm(tx, (d,), scale, eps=1e-5), leaves, tdy)
        return tuple(grads) if weight_grad else grads[0]
    check("rms_norm_backward", [x, w, dy], ref, eps=1e-5, add_unit_offset=unit_offset, weight_grad=weight_grad)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape,groups", [((2, 6), 3), ((2, 4, 5), 1), ((1, 6, 3), 6), ((2, 8, 3, 2), 4),
                                          ((1, 4, 1, 1, 3), 2)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_group_norm(dtype, shape, groups, affine, rng):
    c = shape[1]
    x = rand(rng, shape, dtype) + np.asarray(2, kiln.as_dtype(dtype).np_dtype)
    w, b = (rand(rng, (c,), dtype), rand(rng, (c,), dtype)) if affine else (None, None)
    check("group_norm", [x, w, b], lambda t, tw, tb: F.group_norm(t, groups, tw, tb, eps=1e-5),
          num_groups=groups)


def test_norm_errors_name_param_and_shapes():
    g = kiln.Graph()
    x = g.input("x", (2, 8), "float32")
    with pytest.raises(kiln.GraphError, match=r"'weight' must have shape \(8,\), got float32\[4\]"):
        g.layer_norm(x, g.input("w4", (4,), "float32"))
    with pytest.raises(kiln.GraphError, match="'weight' has dtype float16, expected float32"):
        g.rms_norm(x, g.input("wh", (8,), "float16"))
    with pytest.raises(kiln.GraphError, match="float"):
        g.rms_norm(g.input("i", (2, 8), "int32"))
    with pytest.raises(kiln.GraphError, match="8 channels are not divisible into 3 groups"):
        g.group_norm(g.input("img", (1, 8, 4), "float32"), num_groups=3)
    with pytest.raises(kiln.GraphError, match="missing required attribute 'num_groups'"):
        g.group_norm(g.input("img2", (1, 8, 4), "float32"))
