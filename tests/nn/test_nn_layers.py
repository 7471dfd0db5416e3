"""Linear, Embedding, RMSNorm (plain, (1 + w), no scale), LayerNorm, Conv against torch.nn.functional."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.ir import Graph, GraphError
from kiln.nn import Conv, Embedding, LayerNorm, Linear, Module, RMSNorm
from nn_helpers import close, init_params, run, t


@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_torch(bias, rng):
    lin = Linear("proj", 6, 5, bias)
    p = init_params(lin, rng)
    assert set(p) == ({"proj.weight", "proj.bias"} if bias else {"proj.weight"})
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    g = Graph()
    g.output("y", lin(g, g.input("x", x.shape)))
    want = F.linear(t(x), t(p["proj.weight"]), t(p["proj.bias"]) if bias else None)
    close(run(g, p, x=x)["y"], want)


def test_linear_parts_must_add_up():
    with pytest.raises(ValueError, match=r"parts \(2, 2\) do not add up to out_features 5"):
        Linear("qkv", 4, 5, parts=(2, 2))


def test_embedding_lookup_and_tied_projection(rng):
    emb = Embedding("tok", 11, 4)
    p = init_params(emb, rng)
    ids = rng.integers(0, 11, (2, 5))
    g = Graph()
    e = emb(g, g.input("ids", ids.shape, "int64"))
    g.output("e", e)
    g.output("logits", emb.as_linear(g, e))
    assert list(g.parameters) == ["tok.weight"]   # the head reuses the table
    out = run(g, p, ids=ids)
    want = F.embedding(t(ids), t(p["tok.weight"]))
    close(out["e"], want)
    close(out["logits"], want @ t(p["tok.weight"]).T)


def _rms(x, w, eps, offset):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * ((1 + w) if offset else w)


@pytest.mark.parametrize("offset,scale", [(False, True), (True, True), (False, False)])
def test_rms_norm_variants_match_torch(offset, scale, rng):
    norm = RMSNorm("n", 8, 1e-5, add_unit_offset=offset, scale=scale)
    p = init_params(norm, rng)
    assert set(p) == ({"n.weight"} if scale else set())
    x = 3 * rng.standard_normal((2, 3, 8)).astype(np.float32)
    g = Graph()
    g.output("y", norm(g, g.input("x", x.shape)))
    close(run(g, p, x=x)["y"], _rms(t(x), t(p["n.weight"]) if scale else None, 1e-5, offset))


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch(bias, rng):
    norm = LayerNorm("ln", 8, 1e-5, bias=bias)
    p = init_params(norm, rng)
    x = (2 + 3 * rng.standard_normal((2, 3, 8))).astype(np.float32)
    g = Graph()
    g.output("y", norm(g, g.input("x", x.shape)))
    want = F.layer_norm(t(x), (8,), t(p["ln.weight"]), t(p["ln.bias"]) if bias else None, 1e-5)
    close(run(g, p, x=x)["y"], want)


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_matches_torch(dims, rng):
    conv = Conv("c", 4, 6, 3, dims=dims, stride=2, padding=1)
    p = init_params(conv, rng)
    x = rng.standard_normal((2, 4) + (9,) * dims).astype(np.float32)
    g = Graph()
    g.output("y", conv(g, g.input("x", x.shape)))
    fn = F.conv1d if dims == 1 else F.conv2d
    close(run(g, p, x=x)["y"], fn(t(x), t(p["c.weight"]), t(p["c.bias"]), stride=2, padding=1))


def test_a_parameter_is_shared_by_name_and_must_keep_its_spec(rng):
    a, b = Linear("w", 4, 3), Linear("w", 4, 2)
    g = Graph()
    x = g.input("x", (1, 4))
    a(g, x)
    a(g, x)
    assert list(g.parameters) == ["w.weight"]
    with pytest.raises(GraphError, match=r"parameter 'w.weight' exists as float32\[3, 4\], expected float32\[2, 4\]"):
        b(g, x)

    class Both(Module):
        def __init__(self):
            super().__init__()
            self.parts = [a, b]

    with pytest.raises(GraphError, match="parameter 'w.weight' is declared twice with different specs"):
        Both().params()
