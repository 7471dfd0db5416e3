"""Every rewrite rule fires on its pattern, and the optimized graph computes the same outputs.

Each case builds the primitive pattern a rule is written for, optimizes it, checks the
rule matched during saturation, checks the extracted graph has the expected shape (the
fused op present, the primitives gone), and compares outputs with a node-by-node
reference run of the original graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from opt_testing import random_feeds, reference_run

from kiln.api import reference_evaluate
from kiln.ir import Graph
from kiln.opt import RULE_NAMES, optimize

B, S, D, N = 2, 3, 8, 12


@dataclass
class Case:
    name: str
    rules: tuple[str, ...]            # rules that must match
    build: Callable[[Graph], object]  # returns the output value
    check: Callable[[Counter, Graph], bool]  # on the optimized graph's op counts


def ops(graph) -> Counter:
    return Counter(n.op for n in graph.compute_nodes())


def has(*names, without=()):
    return lambda c, g: all(c[n] for n in names) and not any(c[n] for n in without)


def only(**counts):
    return lambda c, g: dict(c) == counts


def fused(pred):
    return lambda c, g: any(n.op == "fused_linear" and pred(n) for n in g.compute_nodes())


def x_(g, name="x", shape=(B, S, D), dtype="float32"):
    return g.input(name, shape, dtype)


def w_(g, name="w", shape=(N, D)):
    return g.parameter(name, shape)


def lin(g, x, w):
    return g.matmul(x, g.transpose(w, perm=[1, 0]))


def rms(g, x, eps=1e-5):
    return x * g.rsqrt(g.mean(x * x, axes=[-1], keepdims=True) + eps)


def ln(g, x, eps=1e-5, div=False):
    d = x - g.mean(x, axes=[-1], keepdims=True)
    var = g.mean(d * d, axes=[-1], keepdims=True) + eps
    return d / g.sqrt(var) if div else d * g.rsqrt(var)


def gelu_erf(g, x, div=False, assoc=0):
    inner = x / (2.0 ** 0.5) if div else x * (2.0 ** -0.5)
    core = 1.0 + g.erf(inner)
    return [0.5 * x * core, x * core * 0.5, x * (0.5 * core)][assoc]


def gelu_tanh(g, x, cube="mul", assoc=0):
    x3 = g.pow(x, g.scalar(3.0)) if cube == "pow" else x * (x * x)
    core = 1.0 + g.tanh((2.0 / np.pi) ** 0.5 * (x + 0.044715 * x3))
    return [0.5 * x * core, x * core * 0.5, x * (0.5 * core)][assoc]


def softmax(g, s, stable=True):
    e = g.exp(s - g.max(s, axes=[-1], keepdims=True)) if stable else g.exp(s)
    return e / g.sum(e, axes=[-1], keepdims=True)


def silu_(g, x):
    return x * g.sigmoid(x)


def two_silus(g):
    x, z = x_(g), x_(g, "z")
    return g.sigmoid(x) * x + silu_(g, z)


def silu_div(g):
    x = x_(g)
    return x / (1.0 + g.exp(-x))


def rms_div_pow(g):
    x = x_(g)
    return x / g.sqrt(g.mean(g.pow(x, g.scalar(2.0)), axes=[-1], keepdims=True) + 1e-6)


def ln_pow(g):
    x = x_(g)
    d = x - g.mean(x, axes=[-1], keepdims=True)
    return d * g.rsqrt(g.mean(g.pow(d, g.scalar(2.0)), axes=[-1], keepdims=True) + 1e-5)


def qkv_siblings(g):
    x = x_(g)
    return g.concat([lin(g, x, w_(g, "wq")), lin(g, x, w_(g, "wk", (4, D))), lin(g, x, w_(g, "wv", (4, D)))],
                    axis=-1)


def biased_siblings(g):
    x = x_(g)
    return g.concat([lin(g, x, w_(g, "w1")) + g.parameter("b1", (N,)),
                     lin(g, x, w_(g, "w2", (4, D))) + g.parameter("b2", (4,))], axis=-1)


def gated(act):
    """act(x W_g^T) * (x W_u^T): gate and up projections of one input."""
    def build(g):
        x = x_(g)
        return act(g, lin(g, x, w_(g, "wg"))) * lin(g, x, w_(g, "wu"))
    return build


def attention_graph(g, mask=True, div=False, gqa=False):
    hk = 2 if gqa else 4
    q = g.input("q", (1, 4, 5, D))
    k = g.input("k", (1, hk, 5, D))
    v = g.input("v", (1, hk, 5, D))
    if gqa:
        k, v = g.repeat_interleave(k, repeats=2, axis=1), g.repeat_interleave(v, repeats=2, axis=1)
    s = g.matmul(q, g.transpose(k, perm=[0, 1, 3, 2]))
    s = s / (D ** 0.5) if div else s * (D ** -0.5)
    if mask:
        s = s + g.input("mask", (1, 1, 5, 5))
    return g.matmul(softmax(g, s), v)


CASES = [
    # algebra
    Case("mul_one", ("mul_one",), lambda g: g.relu(x_(g) * 1.0), only(relu=1)),
    Case("add_zero", ("add_zero", "add_comm"), lambda g: g.relu(0.0 + x_(g)), only(relu=1)),
    Case("sub_zero", ("sub_zero",), lambda g: g.relu(x_(g) - 0.0), only(relu=1)),
    Case("div_one", ("div_one",), lambda g: g.relu(x_(g) / 1.0), only(relu=1)),
    Case("double_transpose", ("double_transpose",),
         lambda g: g.relu(g.transpose(g.transpose(x_(g), perm=[1, 0, 2]), perm=[0, 2, 1])),
         only(transpose=1, relu=1)),
    Case("identity_transpose", ("double_transpose", "identity_transpose"),
         lambda g: g.relu(g.transpose(g.transpose(x_(g), perm=[1, 0, 2]), perm=[1, 0, 2])), only(relu=1)),
    Case("reshape_chain", ("reshape_chain",),
         lambda g: g.relu(g.reshape(g.reshape(x_(g), shape=[6, 8]), shape=[3, 16])), only(reshape=1, relu=1)),
    Case("identity_reshape", ("reshape_chain", "identity_reshape"),
         lambda g: g.relu(g.reshape(g.reshape(x_(g), shape=[6, 8]), shape=[B, S, D])), only(relu=1)),
    Case("identity_broadcast", ("identity_broadcast",),
         lambda g: g.relu(g.broadcast_to(x_(g), shape=[B, S, D])), only(relu=1)),
    Case("broadcast_fold_add", ("broadcast_fold_add",),
         lambda g: x_(g) + g.broadcast_to(g.parameter("b", (D,)), shape=[B, S, D]), only(add=1)),
    Case("broadcast_fold_mul", ("broadcast_fold_mul",),
         lambda g: x_(g) * g.broadcast_to(g.parameter("b", (D,)), shape=[B, S, D]), only(mul=1)),
    Case("broadcast_fold_sub", ("broadcast_fold_sub",),
         lambda g: x_(g) - g.broadcast_to(g.parameter("b", (D,)), shape=[B, S, D]), only(sub=1)),
    Case("broadcast_fold_div", ("broadcast_fold_div",),
         lambda g: x_(g) / g.broadcast_to(g.parameter("b_pos", (D,)), shape=[B, S, D]), only(div=1)),
    Case("transpose_into_matmul_b", ("transpose_into_matmul_b",),
         lambda g: g.matmul(x_(g), g.transpose(g.input("y", (B, N, D)), perm=[0, 2, 1])),
         lambda c, g: dict(c) == {"matmul": 1} and g.compute_nodes()[0].attrs["transpose_b"]),
    Case("transpose_into_matmul_b_undo", ("transpose_into_matmul_b_undo",),
         lambda g: g.matmul(x_(g), g.transpose(g.input("y", (B, D, N)), perm=[0, 2, 1]), transpose_b=True),
         lambda c, g: dict(c) == {"matmul": 1} and not g.compute_nodes()[0].attrs["transpose_b"]),
    Case("transpose_into_matmul_a", ("transpose_into_matmul_a",),
         lambda g: g.matmul(g.transpose(g.input("y", (B, D, S)), perm=[0, 2, 1]), g.input("z", (B, D, N))),
         lambda c, g: dict(c) == {"matmul": 1} and g.compute_nodes()[0].attrs["transpose_a"]),
    Case("transpose_into_matmul_a_undo", ("transpose_into_matmul_a_undo",),
         lambda g: g.matmul(g.transpose(g.input("y", (B, S, D)), perm=[0, 2, 1]), g.input("z", (B, D, N)),
                            transpose_a=True),
         lambda c, g: dict(c) == {"matmul": 1} and not g.compute_nodes()[0].attrs["transpose_a"]),
    Case("cast_chain", ("cast_chain",),
         lambda g: g.cast(g.cast(x_(g, dtype="float16"), dtype="float32"), dtype="float64"), only(cast=1)),
    Case("identity_cast", ("identity_cast",),
         lambda g: g.relu(g.cast(g.cast(x_(g, dtype="float16"), dtype="float32"), dtype="float16")), only(relu=1)),
    Case("slice_of_slice", ("slice_of_slice",),
         lambda g: g.relu(g.slice(g.slice(x_(g), axes=[-1], starts=[2], ends=[8]), axes=[-1], starts=[1], ends=[4])),
         lambda c, g: dict(c) == {"slice": 1, "relu": 1} and
         next(n for n in g.compute_nodes() if n.op == "slice").attrs["starts"] == [3]),
    # pointwise fusions
    Case("silu", ("silu", "mul_comm"),
         two_silus, only(silu=2, add=1)),
    Case("silu_div", ("silu_div",), silu_div, only(silu=1)),
    Case("swiglu", ("silu", "swiglu"),
         lambda g: silu_(g, x_(g)) * x_(g, "u"), only(swiglu=1)),
    Case("geglu", ("gelu_erf", "geglu"), lambda g: gelu_erf(g, x_(g)) * x_(g, "u"), only(geglu=1)),
    Case("gelu_erf", ("gelu_erf_core", "gelu_erf"), lambda g: gelu_erf(g, x_(g)), only(gelu=1)),
    Case("gelu_erf_div", ("gelu_erf_core_div", "gelu_erf"), lambda g: gelu_erf(g, x_(g), div=True), only(gelu=1)),
    Case("gelu_erf_assoc", ("gelu_erf_assoc",), lambda g: gelu_erf(g, x_(g), assoc=1), only(gelu=1)),
    Case("gelu_erf_assoc2", ("gelu_erf_assoc2",), lambda g: gelu_erf(g, x_(g), assoc=2), only(gelu=1)),
    Case("gelu_tanh", ("cube_mul", "gelu_tanh_core", "gelu_tanh"), lambda g: gelu_tanh(g, x_(g)),
         lambda c, g: dict(c) == {"gelu": 1} and g.compute_nodes()[0].attrs["approximate"] == "tanh"),
    Case("gelu_tanh_pow", ("cube_pow", "gelu_tanh"), lambda g: gelu_tanh(g, x_(g), cube="pow"), only(gelu=1)),
    Case("gelu_tanh_assoc", ("gelu_tanh_assoc",), lambda g: gelu_tanh(g, x_(g), assoc=1), only(gelu=1)),
    Case("gelu_tanh_assoc2", ("gelu_tanh_assoc2",), lambda g: gelu_tanh(g, x_(g), assoc=2), only(gelu=1)),
    # reductions
    Case("softmax_stable", ("softmax_stable",), lambda g: softmax(g, x_(g)), only(softmax=1)),
    Case("softmax_plain", ("softmax_plain",), lambda g: softmax(g, x_(g), stable=False), only(softmax=1)),
    Case("rms_norm", ("mean_square", "mean_square_eps", "rms_norm"), lambda g: rms(g, x_(g)), only(rms_norm=1)),
    Case("rms_norm_div", ("mean_square_pow", "rms_norm_div"),
         rms_div_pow,
         only(rms_norm=1)),
    Case("rms_norm_weight", ("rms_norm_weight",), lambda g: g.parameter("w", (D,)) * rms(g, x_(g)),
         lambda c, g: dict(c) == {"rms_norm": 1} and g.compute_nodes()[0].inputs[1] is not None),
    Case("rms_norm_unit_offset", ("rms_norm_unit_offset",), lambda g: rms(g, x_(g)) * (1.0 + g.parameter("w", (D,))),
         lambda c, g: dict(c) == {"rms_norm": 1} and g.compute_nodes()[0].attrs["add_unit_offset"]),
    Case("layer_norm", ("center", "variance_eps", "layer_norm"), lambda g: ln(g, x_(g)), only(layer_norm=1)),
    Case("layer_norm_div", ("layer_norm_div",), lambda g: ln(g, x_(g), div=True), only(layer_norm=1)),
    Case("layer_norm_pow", ("variance_eps_pow",), ln_pow,
         only(layer_norm=1)),
    Case("layer_norm_affine", ("layer_norm_weight", "layer_norm_bias"),
         lambda g: ln(g, x_(g)) * g.parameter("w", (D,)) + g.parameter("b", (D,)),
         lambda c, g: dict(c) == {"layer_norm": 1} and None not in g.compute_nodes()[0].inputs),
    # matmul family
    Case("linear", ("linear", "transpose_into_matmul_b"), lambda g: lin(g, x_(g), w_(g)), only(linear=1)),
    Case("linear_bias", ("linear_bias",), lambda g: lin(g, x_(g), w_(g)) + g.parameter("b", (N,)),
         lambda c, g: dict(c) == {"linear": 1} and g.compute_nodes()[0].inputs[2] is not None),
    Case("linear_silu", ("linear_silu",), lambda g: silu_(g, lin(g, x_(g), w_(g))),
         fused(lambda n: n.attrs["activation"] == "silu")),
    Case("linear_gelu", ("linear_gelu",), lambda g: gelu_erf(g, lin(g, x_(g), w_(g))),
         fused(lambda n: n.attrs["activation"] == "gelu")),
    Case("linear_gelu_tanh", ("linear_gelu_tanh",), lambda g: gelu_tanh(g, lin(g, x_(g), w_(g))),
         fused(lambda n: n.attrs["activation"] == "gelu_tanh")),
    Case("linear_relu", ("linear_relu",), lambda g: g.relu(lin(g, x_(g), w_(g)) + g.parameter("b", (N,))),
         fused(lambda n: n.attrs["activation"] == "relu" and n.inputs[2] is not None)),
    Case("linear_residual", ("linear_residual",), lambda g: x_(g, "r", (B, S, N)) + lin(g, x_(g), w_(g)),
         fused(lambda n: n.inputs[3] is not None)),
    Case("rms_norm_prologue", ("rms_norm_prologue",), lambda g: lin(g, g.parameter("g", (D,)) * rms(g, x_(g)), w_(g)),
         lambda c, g: dict(c) == {"fused_linear": 1} and g.compute_nodes()[0].attrs["norm"] == "rms_norm"),
    Case("layer_norm_prologue", ("layer_norm_prologue",),
         lambda g: lin(g, ln(g, x_(g)) * g.parameter("g", (D,)) + g.parameter("gb", (D,)), w_(g)),
         lambda c, g: dict(c) == {"fused_linear": 1} and g.compute_nodes()[0].attrs["norm"] == "layer_norm"),
    Case("sibling_matmuls", ("sibling_matmuls",), qkv_siblings,
         lambda c, g: c["linear"] == 1 and c["split"] == 1),
    Case("sibling_matmuls_bias", ("sibling_matmuls_bias",), biased_siblings,
         lambda c, g: c["linear"] == 1 and c["split"] == 1),
    Case("linear_swiglu", ("sibling_matmuls", "linear_swiglu"),
         gated(silu_),
         fused(lambda n: n.attrs["activation"] == "swiglu")),
    Case("linear_geglu", ("linear_geglu",),
         gated(gelu_erf),
         fused(lambda n: n.attrs["activation"] == "geglu")),
    Case("linear_geglu_tanh", ("linear_geglu_tanh",),
         gated(gelu_tanh),
         fused(lambda n: n.attrs["activation"] == "geglu_tanh")),
    # attention
    Case("attention", ("attention",), lambda g: attention_graph(g), only(attention=1)),
    Case("attention_div", ("attention_div",), lambda g: attention_graph(g, div=True), only(attention=1)),
    Case("attention_nomask", ("attention_nomask",), lambda g: attention_graph(g, mask=False), only(attention=1)),
    Case("attention_nomask_div", ("attention_nomask_div",), lambda g: attention_graph(g, mask=False, div=True),
         only(attention=1)),
    Case("attention_gqa", ("attention_gqa",), lambda g: attention_graph(g, gqa=True), only(attention=1)),
]


def _graph(case: Case) -> Graph:
    g = Graph(case.name)
    g.output("y", case.build(g))
    return g


def test_every_rule_has_a_case():
    covered = {r for c in CASES for r in c.rules}
    assert set(RULE_NAMES) - covered == set()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rule_fires_and_preserves_outputs(case: Case):
    g = _graph(case)
    opt, report = optimize(g, evaluate=reference_evaluate)
    assert not report.fell_back, report.reason
    missing = [r for r in case.rules if not report.rule_matches.get(r)]
    assert not missing, f"rules {missing} did not match; matched: {report.rule_matches}"
    assert case.check(ops(opt), opt), opt.dump()
    feeds = random_feeds(g, seed=1)
    want, got = reference_run(g, feeds)["y"], reference_run(opt, feeds)["y"]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rule_can_be_excluded():
    case = next(c for c in CASES if c.name == "silu_div")
    opt, report = optimize(_graph(case), exclude_rules=["silu_div"])
    assert "silu_div" not in report.rule_matches
    assert ops(opt)["silu"] == 0


def test_unknown_rule_name_is_an_error():
    with pytest.raises(ValueError, match="unknown rewrite rule 'no_such_rule'"):
        optimize(_graph(CASES[0]), exclude_rules=["no_such_rule"])
