"""MLP (plain and gated, each activation) and pre-/post-norm transformer blocks (with cross-attention)
against torch compositions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.ir import Graph
from kiln.nn import MLP, Attention, CrossAttention, LayerNorm, RMSNorm, TransformerBlock
from nn_helpers import close, init_params, run, t
from torch_ref import act, heads, merge, rms, sdpa


@pytest.mark.parametrize("activation,gated,bias", [
    ("gelu", False, True), ("gelu_tanh", False, False), ("relu", False, True), ("silu", True, False),
    ("gelu_tanh", True, True), ("sigmoid", True, False)])
def test_mlp_matches_torch(activation, gated, bias, rng):
    mlp = MLP("mlp", 6, 10, activation, gated=gated, bias=bias)
    p = init_params(mlp, rng)
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    g = Graph()
    g.output("y", mlp(g, g.input("x", x.shape)))

    def lin(name, h):
        return F.linear(h, t(p[f"mlp.{name}.weight"]), t(p[f"mlp.{name}.bias"]) if bias else None)

    if gated:
        gate, up = torch.split(lin("gate_up_proj", t(x)), [10, 10], -1)
        h = act(gate, activation) * up
    else:
        h = act(lin("up_proj", t(x)), activation)
    close(run(g, p, x=x)["y"], lin("down_proj", h))


def test_mlp_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="activation 'swish' is not one of"):
        MLP("m", 4, 8, "swish")


def _attn_ref(p, name, x, nh, keep=None):
    wq, wk, wv = torch.split(t(p[f"{name}.qkv_proj.weight"]), [x.shape[-1]] * 3)
    o = sdpa(heads(F.linear(x, wq), nh), heads(F.linear(x, wk), nh), heads(F.linear(x, wv), nh), keep)
    return F.linear(merge(o), t(p[f"{name}.o_proj.weight"]))


def test_pre_norm_block_is_two_residuals_over_normed_inputs(rng):
    d = 8
    block = TransformerBlock(RMSNorm("b.n1", d), Attention("b.attn", d, 2, causal=True), RMSNorm("b.n2", d),
                             MLP("b.mlp", d, 12, "silu", gated=True))
    p = init_params(block, rng)
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    g = Graph()
    g.output("y", block(g, g.input("x", x.shape)))
    h = t(x) + _attn_ref(p, "b.attn", rms(t(x), t(p["b.n1.weight"]), 1e-6), 2, torch.ones(5, 5).tril().bool())
    gate, up = torch.split(F.linear(rms(h, t(p["b.n2.weight"]), 1e-6), t(p["b.mlp.gate_up_proj.weight"])), 12, -1)
    close(run(g, p, x=x)["y"], h + F.linear(F.silu(gate) * up, t(p["b.mlp.down_proj.weight"])))


def test_post_norm_block_with_cross_attention(rng):
    d, nh = 8, 2
    block = TransformerBlock(LayerNorm("b.n1", d), Attention("b.attn", d, nh), LayerNorm("b.n3", d),
                             MLP("b.mlp", d, 12, "gelu"), post_norm=True,
                             cross_norm=LayerNorm("b.n2", d), cross=CrossAttention("b.cross", d, nh, bias=False,
                                                                                   out_bias=False))
    p = init_params(block, rng)
    x = rng.standard_normal((2, 4, d)).astype(np.float32)
    mem = rng.standard_normal((2, 6, d)).astype(np.float32)
    g = Graph()
    memory = block.cross.memory(g, g.input("mem", mem.shape))
    g.output("y", block(g, g.input("x", x.shape), memory=memory))

    def ln(name, h):
        return F.layer_norm(h, (d,), t(p[f"b.{name}.weight"]), t(p[f"b.{name}.bias"]), 1e-5)

    h = ln("n1", _attn_ref(p, "b.attn", t(x), nh) + t(x))
    wk, wv = torch.split(t(p["b.cross.kv_proj.weight"]), [d, d])
    c = sdpa(heads(F.linear(h, t(p["b.cross.q_proj.weight"])), nh), heads(F.linear(t(mem), wk), nh),
             heads(F.linear(t(mem), wv), nh))
    h = ln("n2", F.linear(merge(c), t(p["b.cross.out_proj.weight"])) + h)
    m = F.linear(F.gelu(F.linear(h, t(p["b.mlp.up_proj.weight"]))), t(p["b.mlp.down_proj.weight"]))
    close(run(g, p, x=x, mem=mem)["y"], ln("n3", m + h))


def test_params_lists_every_block_parameter_once():
    block = TransformerBlock(RMSNorm("l.n1", 4), Attention("l.attn", 4, 2, qkv_bias=True), RMSNorm("l.n2", 4),
                             MLP("l.mlp", 4, 6, "silu", gated=True))
    spec = block.params()
    assert sorted(spec) == ["l.attn.o_proj.weight", "l.attn.qkv_proj.bias", "l.attn.qkv_proj.weight",
                            "l.mlp.down_proj.weight", "l.mlp.gate_up_proj.weight", "l.n1.weight", "l.n2.weight"]
    assert spec["l.attn.qkv_proj.weight"].parts == (4, 4, 4) and spec["l.mlp.gate_up_proj.weight"].shape == (12, 4)
