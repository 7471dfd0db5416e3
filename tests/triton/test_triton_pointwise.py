"""Pointwise archetype: generated kernels for fused elementwise chains vs the NumPy kernels."""

import numpy as np
import pytest

from helpers import check, randn
from kiln.ir import Graph

UNARY = ["exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "neg", "abs", "relu"]
BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_unary_and_binary_op_fused_in_one_kernel(rng, dtype):
    g = Graph()
    x = g.input("x", (3, 5), dtype)
    y = g.input("y", (5,), dtype)          # broadcast along rows
    pos = g.abs(x) + g.scalar(0.5, dtype)  # positive operand for log/sqrt/pow
    for i, op in enumerate(UNARY):
        arg = pos if op in ("log", "sqrt", "rsqrt") else x
        g.output(f"u_{op}", getattr(g, op)(arg))
    for op in BINARY:
        a = pos if op == "pow" else x
        g.output(f"b_{op}", getattr(g, op)(a, y))
    g.output("gelu", g.gelu(x, approximate="none"))
    g.output("gelu_tanh", g.gelu(x, approximate="tanh"))
    g.output("swiglu", g.swiglu(x, y))
    g.output("geglu", g.geglu(x, y, approximate="tanh"))
    g.output("clamp", g.clamp(x, min=-0.5, max=0.25))
    ex = check(g, {"x": randn(rng, (3, 5), dtype), "y": randn(rng, (5,), dtype)})
    assert ex.stats()["by_archetype"] == {"pointwise": len(ex.program.launches)}
    assert not ex.stats()["fallbacks"]


def test_chain_runs_as_one_launch_with_strided_and_broadcast_operands(rng):
    g = Graph()
    x = g.input("x", (4, 6))
    b = g.input("b", (4, 1))
    xt = g.transpose(x, perm=[1, 0])                   # a strided view, read in place
    h = g.silu(xt * 2.0 + g.transpose(b, perm=[1, 0]))
    out = g.where(g.greater(h, g.scalar(0.1)), h, g.tanh(h) - 1.0)
    g.output("y", g.cast(out, dtype="bfloat16"))
    ex = check(g, {"x": randn(rng, (4, 6)), "b": randn(rng, (4, 1))})
    assert len(ex.program.launches) == 1
    assert ex.stats()["fused"]["pointwise_chain"] == 1


def test_integer_bool_compare_logical_and_casts(rng):
    g = Graph()
    i = g.input("i", (2, 7), "int64")
    j = g.input("j", (7,), "int64")
    s = i * j - g.scalar(3, "int64")
    both = g.logical_and(g.greater(s, g.scalar(0, "int64")), g.logical_not(g.equal(i, j)))
    g.output("s", s)
    g.output("mx", g.maximum(i, j))
    g.output("both", g.logical_or(both, g.less_equal(i, g.scalar(-2, "int64"))))
    g.output("f", g.cast(s, dtype="float32") / 4.0)
    g.output("back", g.cast(g.cast(i, dtype="float32") * 1.5, dtype="int32"))
    g.output("half", g.cast(g.cast(i, dtype="float32") / 7.0, dtype="float16"))
    check(g, {"i": rng.integers(-5, 5, (2, 7)), "j": rng.integers(-5, 5, (7,))})


def test_nan_and_inf_follow_numpy(rng):
    g = Graph()
    x = g.input("x", (6,))
    g.output("mx", g.maximum(x, g.scalar(0.0)))
    g.output("relu", g.relu(x))
    g.output("clamp", g.clamp(x, min=-1.0))
    g.output("exp", g.exp(x))
    g.output("div", x / g.scalar(0.0))
    g.output("sig", g.sigmoid(x))
    x_val = np.array([np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0], np.float32)
    with np.errstate(all="ignore"):
        check(g, {"x": x_val})


def test_float64_and_large_literals(rng):
    g = Graph()
    x = g.input("x", (9,), "float64")
    g.output("y", g.exp(x) * g.scalar(1e10, "float64") + g.scalar(0.1, "float64"))
    check(g, {"x": randn(rng, (9,), "float64")})


def test_one_expression_over_independent_tensors_is_one_launch(rng):
    """An optimizer-like update of three parameters of different sizes (and one of a single
    element) sharing a scalar input: one multi-tensor launch, equal to the reference."""
    from helpers import run_both, assert_close
    g = Graph()
    lr = g.input("lr", ())
    shapes = [(37, 5), (300,), (1,), (2, 3, 4)]
    feeds = {"lr": np.asarray(0.1, np.float32)}
    for i, shape in enumerate(shapes):
        p, d = g.input(f"p{i}", shape), g.input(f"g{i}", shape)
        g.output(f"new{i}", p - lr * (d * 0.5 + p * 0.01))
        feeds[f"p{i}"], feeds[f"g{i}"] = randn(rng, shape), randn(rng, shape)
    ref, out, cg = run_both(g, feeds)
    assert_close(out, ref)
    labels = [launch.label for launch in cg.executor.program.launches]
    assert len(labels) == 1 and labels[0].endswith(f"[{len(shapes)} tensors]"), labels
    for _ in range(2):   # the pointer tables are reused run after run
        feeds = {k: randn(rng, v.shape) if k != "lr" else v for k, v in feeds.items()}
        ref = run_both(g, feeds)[0]
        assert_close(cg.run(**feeds), ref)


def test_master_weight_casts_of_every_layer_are_one_launch(rng):
    """Three 'layers' each cast their float32 master weight (a state) to bfloat16 where they use
    it: the Plan moves the narrowing casts to the front, so they are one multi-tensor launch; the
    widening cast of an input stays where it is."""
    from helpers import assert_close, compiled_pair
    g = Graph()
    h = g.input("x", (4, 8), "bfloat16")
    feeds = {"x": randn(rng, (4, 8), "bfloat16")}
    for i in range(3):
        w = g.state(f"w{i}", (8, 8), "float32")
        h = g.tanh(g.linear(h, g.cast(w, dtype="bfloat16")))
        g.assign(w, w * 0.5)   # an update, as an optimizer's
    g.output("y", g.cast(h, dtype="float32") + g.cast(g.input("b", (4, 8), "bfloat16"), dtype="float32"))
    feeds["b"] = randn(rng, (4, 8), "bfloat16")
    ref_cg, cg = compiled_pair(g)
    for c in (ref_cg, cg):
        for i in range(3):
            c.set_state(f"w{i}", randn(np.random.default_rng(i), (8, 8), "float32", 0.3))
    for _ in range(2):   # the second run sees the updated weights
        assert_close(cg.run(**feeds), ref_cg.run(**feeds), floor=2e-2)
    labels = [launch.label for launch in cg.executor.program.launches]
    assert labels.count("cast [3 tensors]") == 1 and labels[0] == "cast [3 tensors]", labels


def test_sibling_chains_reading_one_operand_are_one_launch(rng):
    """swiglu's two gradients (d_up = dy * silu(gate), d_gate = dy * up * silu'(gate)) read gate
    and dy: one launch with both outputs, equal to the NumPy backend."""
    g = Graph()
    gate, up, dy = (g.input(n, (6, 10)) for n in ("gate", "up", "dy"))
    g.output("d_up", dy * g.silu(gate))
    s = g.sigmoid(gate)
    g.output("d_gate", dy * up * s * (1.0 + gate * (1.0 - s)))
    ex = check(g, {n: randn(rng, (6, 10)) for n in ("gate", "up", "dy")})
    assert len(ex.program.launches) == 1, [launch.label for launch in ex.program.launches]
