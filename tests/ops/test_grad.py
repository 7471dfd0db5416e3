"""The backward-pass ops (kiln.ir.ops.grad) against torch.

index_add / scatter_add against torch's index_add / scatter_add; attention_lse against an
explicit softmax and torch.logsumexp; attention_backward against torch autograd through
scaled_dot_product_attention (or the explicit softcap reference), with out and lse from kiln.
"""

import numpy as np
import pytest
import torch

import kiln
from harness import check, rand, run_op, to_numpy, to_torch
from test_attention import SHAPES, _attention_case, explicit_reference, sdpa_reference

TESTED_OPS = {"index_add", "scatter_add", "attention_lse", "attention_backward", "interpolate_backward"}


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("axis,idx_shape,src_shape,size", [
    (0, (7,), (7, 3), 5),            # embedding gradient: repeated rows accumulate
    (1, (2, 3), (4, 2, 3, 2), 4),    # multi-dim indices in the middle
    (2, (3,), (2, 3, 3), 6),         # last axis
])
def test_index_add(dtype, axis, idx_shape, src_shape, size, rng):
    idx = rng.integers(-size, size, idx_shape)
    src = rand(rng, src_shape, dtype)

    def ref(i, s):
        flat = s.reshape(s.shape[:axis] + (-1,) + s.shape[axis + i.ndim:])
        out_shape = s.shape[:axis] + (size,) + s.shape[axis + i.ndim:]
        return torch.zeros(out_shape, dtype=s.dtype).index_add(axis, (i % size).reshape(-1), flat)
    check("index_add", [idx, src], ref, out_dtype=dtype, axis=axis, size=size)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("axis,idx_shape,src_shape,size", [
    (-1, (3, 4), (3, 4), 6),
    (0, (3, 1), (3, 2), 4),          # indices broadcast along the other axis
    (1, (2, 5, 3), (2, 5, 3), 2),    # many collisions
])
def test_scatter_add(dtype, axis, idx_shape, src_shape, size, rng):
    idx = rng.integers(0, size, idx_shape)
    src = rand(rng, src_shape, dtype)

    def ref(i, s):
        shape = list(s.shape)
        shape[axis] = size
        return torch.zeros(shape, dtype=s.dtype).scatter_add(axis, i.expand(s.shape), s)
    check("scatter_add", [idx, src], ref, out_dtype=dtype, axis=axis, size=size)


def test_scatter_ops_reject_out_of_range_indices(rng):
    with pytest.raises(IndexError, match=r"index_add: index out of range \[-3, 3\)"):
        run_op("index_add", [np.array([0, 3]), rand(rng, (2, 4), "float32")], size=3)
    with pytest.raises(IndexError, match="scatter_add: index out of range"):
        run_op("scatter_add", [np.array([[5]]), rand(rng, (1, 1), "float32")], axis=0, size=2)


def test_scatter_op_type_errors():
    g = kiln.Graph()
    src = g.input("src", (4, 3), "float32")
    with pytest.raises(kiln.GraphError, match="must have the indices' shape"):
        g.index_add(g.input("i", (5,), "int64"), src, axis=0, size=2)
    with pytest.raises(kiln.GraphError, match="'indices' must be an integer tensor"):
        g.index_add(g.input("f", (4,), "float32"), src, size=2)
    with pytest.raises(kiln.GraphError, match="must broadcast to src"):
        g.scatter_add(g.input("j", (4, 5), "int64"), src, size=2)


ATT_CASES = [  # (shape name, config)
    ("self", {}), ("self", {"causal": True}), ("gqa", {"causal": True}),
    ("gqa_decode", {"window": 2}), ("prefill_chunk", {"causal": True, "window": 2, "scale": 0.3}),
    ("self", {"mask": "bool"}), ("gqa", {"mask": "float", "causal": True}),
    ("self", {"softcap": 1.5, "causal": True}), ("more_q_than_k", {"causal": True}),
]


def _reference(attrs):
    if attrs.get("softcap") is not None:
        return lambda q, k, v, m: explicit_reference(q, k, v, m, **attrs)
    return lambda q, k, v, m: sdpa_reference(q, k, v, m, **attrs)


def _torch_scores(q, k, mask, attrs):
    """The masked scores whose logsumexp attention_lse returns."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if attrs.get("scale") is None else attrs["scale"]
    s = (q @ k.transpose(-1, -2)) * scale
    if attrs.get("softcap") is not None:
        s = attrs["softcap"] * torch.tanh(s / attrs["softcap"])
    from test_attention import combined_mask
    m = combined_mask(q, k, mask, attrs.get("causal", False), attrs.get("window"))
    return s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("shape,cfg", ATT_CASES, ids=[f"{s}-{'-'.join(c) or 'plain'}" for s, c in ATT_CASES])
def test_attention_lse(dtype, shape, cfg, rng):
    inputs, attrs = _attention_case(rng, dtype, SHAPES[shape], cfg)
    ref = _reference(attrs)

    def both(q, k, v, m):
        return ref(q, k, v, m), torch.logsumexp(_torch_scores(q, k, m, attrs), -1)
    out, lse = run_op("attention_lse", inputs, **attrs)
    assert lse.dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype))
    t = [None if a is None else to_torch(a) for a in inputs]
    want_out, want_lse = both(*t)
    np.testing.assert_allclose(out.astype(np.float64), to_numpy(want_out, dtype).astype(np.float64),
                               rtol=2e-2 if dtype == "bfloat16" else 1e-5, atol=1e-2 if dtype == "bfloat16" else 1e-6)
    finite = np.isfinite(want_lse.numpy())
    assert np.array_equal(np.isfinite(lse), finite)  # fully masked rows: -inf
    np.testing.assert_allclose(lse[finite], want_lse.numpy()[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape,cfg", ATT_CASES, ids=[f"{s}-{'-'.join(c) or 'plain'}" for s, c in ATT_CASES])
def test_attention_backward_matches_autograd(dtype, shape, cfg, rng):
    inputs, attrs = _attention_case(rng, dtype, SHAPES[shape], cfg)
    q, k, v, mask = inputs
    out, lse = run_op("attention_lse", inputs, **attrs)
    dout = rand(rng, out.shape, dtype)
    mask_grad = mask is not None and mask.dtype != np.bool_
    got = run_op("attention_backward", [q, k, v, mask, out, lse, dout], mask_grad=mask_grad, **attrs)

    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
    tm = None if mask is None else torch.from_numpy(mask)
    leaves = [tq, tk, tv]
    if mask_grad:
        tm.requires_grad_(True)
        leaves.append(tm)
    want = torch.autograd.grad(_reference(attrs)(tq, tk, tv, tm), leaves, torch.from_numpy(dout))
    tol = 1e-10 if dtype == "float64" else 2e-5
    for name, a, b in zip("q k v mask".split(), got, want):
        b = b.numpy()
        if name == "mask":  # the op gives d scores [B, H, Sq, Sk]; the mask broadcasts into it
            a = a.sum(axis=tuple(i for i, d in enumerate(mask.shape) if d == 1 and a.shape[i] != 1), keepdims=True)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"d{name}")


def test_attention_backward_dlse_is_the_lse_cotangent(rng):
    """With dlse, the op adds the gradient of <dlse, lse> (softmax-weighted) to dq and dk."""
    inputs, attrs = _attention_case(rng, "float64", SHAPES["gqa"], {"causal": True})
    q, k, v, _ = inputs
    out, lse = run_op("attention_lse", inputs, **attrs)
    dout, dlse = rand(rng, out.shape, "float64"), rand(rng, lse.shape, "float64")
    got = run_op("attention_backward", [q, k, v, None, out, lse, dout, dlse], **attrs)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
    t_out = sdpa_reference(tq, tk, tv, None, **attrs)
    t_lse = torch.logsumexp(_torch_scores(tq, tk, None, attrs), -1)
    obj = (t_out * torch.from_numpy(dout)).sum() + (t_lse * torch.from_numpy(dlse)).sum()
    for a, b in zip(got, torch.autograd.grad(obj, [tq, tk, tv])):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-10)


def test_attention_backward_type_errors():
    g = kiln.Graph()
    q = g.input("q", (1, 2, 3, 4), "float32")
    k = g.input("k", (1, 2, 5, 4), "float32")
    out, lse = g.attention_lse(q, k, k)
    with pytest.raises(kiln.GraphError, match="'dout' must have shape"):
        g.attention_backward(q, k, k, None, out, lse, g.input("d", (1, 2, 3, 5), "float32"))
    with pytest.raises(kiln.GraphError, match="lse must be float32\\[1, 2, 3\\]"):
        g.attention_backward(q, k, k, None, out, g.input("l", (1, 2, 4), "float32"), out)
    with pytest.raises(kiln.GraphError, match="mask_grad needs a float"):
        g.attention_backward(q, k, k, None, out, lse, out, mask_grad=True)


INTERP_CASES = [  # input shape, interpolate attrs
    ((2, 3, 5), dict(size=[9])),
    ((1, 2, 4, 3), dict(scale_factor=2.0)),
    ((1, 2, 4, 3), dict(size=[7, 5], mode="bilinear")),
    ((1, 2, 5, 6), dict(scale_factor=[0.6, 1.5], mode="bilinear", align_corners=True)),
    ((1, 2, 5, 6), dict(size=[3, 4], mode="nearest-exact")),
    ((1, 1, 3, 2, 4), dict(scale_factor=1.7, mode="trilinear", recompute_scale_factor=True)),
    ((2, 2, 6), dict(size=[6], mode="linear")),  # same size: a copy
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("shape,attrs", INTERP_CASES, ids=[str(i) for i in range(len(INTERP_CASES))])
def test_interpolate_backward_is_torch_upsample_backward(dtype, shape, attrs, rng):
    x_probe = np.zeros(shape, np.float32)
    out_shape = run_op("interpolate", [x_probe], **attrs).shape
    dy = rand(rng, out_shape, dtype)

    def ref(t_dy):
        x = torch.zeros(shape, dtype=t_dy.dtype)
        _, pullback = torch.func.vjp(lambda t: torch.nn.functional.interpolate(t, **attrs), x)
        return pullback(t_dy)[0]
    check("interpolate_backward", [dy], ref, input_size=list(shape[2:]), **attrs)


def test_interpolate_backward_checks_sizes():
    g = kiln.Graph()
    dy = g.input("dy", (1, 2, 6, 6), "float32")
    with pytest.raises(kiln.GraphError, match=r"must have interpolate's output size \(8, 8\)"):
        g.interpolate_backward(dy, input_size=[4, 4], scale_factor=2.0)
    with pytest.raises(kiln.GraphError, match="input_size must list the 2 spatial sizes"):
        g.interpolate_backward(dy, input_size=[3], scale_factor=2.0)
