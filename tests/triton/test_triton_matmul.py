"""Matmul archetype: batched matmul with transposes, linear, fused_linear and the fused prologue /
epilogue patterns (norm -> linear, linear -> residual add, linear -> split -> swiglu, -> cast)."""

import pytest

from helpers import check, randn
from kiln.ir import Graph


def test_batched_matmul_with_transposes_and_broadcast_batch(rng):
    g = Graph()
    a = g.input("a", (2, 3, 7, 5))
    b = g.input("b", (3, 6, 7))
    c = g.input("c", (1, 7, 4))
    d = g.input("d", (5, 4))
    g.output("ab", g.matmul(a, b, transpose_a=True, transpose_b=True))   # [2,3,5,6]
    g.output("ac", g.matmul(g.transpose(a, perm=[0, 1, 3, 2]), c))       # [2,3,5,4]
    g.output("mm2d", g.matmul(g.reshape(a, shape=[42, 5]), d))
    ex = check(g, {"a": randn(rng, (2, 3, 7, 5)), "b": randn(rng, (3, 6, 7)), "c": randn(rng, (1, 7, 4)),
                   "d": randn(rng, (5, 4))})
    assert ex.stats()["by_archetype"]["matmul"] == 3 and not ex.stats()["fallbacks"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_and_fused_linear(rng, dtype):
    g = Graph()
    x = g.input("x", (2, 3, 24), dtype)
    w = g.parameter("w", (20, 24), dtype)
    w2 = g.parameter("w2", (40, 24), dtype)
    bias = g.parameter("bias", (20,), dtype)
    nw = g.parameter("nw", (24,), dtype)
    nb = g.parameter("nb", (24,), dtype)
    r = g.input("r", (2, 3, 20), dtype)
    g.output("linear", g.linear(x, w, bias))
    g.output("fl_rms_silu_res", g.fused_linear(x, w, bias, r, nw, None, activation="silu", norm="rms_norm", eps=1e-6))
    g.output("fl_ln_gelu", g.fused_linear(x, w, None, None, nw, nb, activation="gelu_tanh", norm="layer_norm"))
    g.output("fl_swiglu", g.fused_linear(x, w2, None, r, None, None, activation="swiglu"))
    g.output("fl_relu_unit", g.fused_linear(x, w, bias, None, nw, None, activation="relu", norm="rms_norm",
                                            add_unit_offset=True))
    params = {"w": randn(rng, (20, 24), dtype, 0.2), "w2": randn(rng, (40, 24), dtype, 0.2),
              "bias": randn(rng, (20,), dtype), "nw": randn(rng, (24,), dtype), "nb": randn(rng, (24,), dtype)}
    check(g, {"x": randn(rng, (2, 3, 24), dtype), "r": randn(rng, (2, 3, 20), dtype)}, params)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformer_block_patterns_fuse_into_matmuls(rng, dtype):
    """The optimizer makes norm -> linear a prologue and + residual, split + swiglu epilogues
    (fused_linear); the Plan's matmul_cast kernel takes the cast: four launches in all."""
    g = Graph()
    x = g.input("x", (2, 5, 16), dtype)
    p = {n: g.parameter(n, s, dtype) for n, s in
         [("n1", (16,)), ("wo", (16, 16)), ("n2", (16,)), ("wgu", (48, 16)), ("wd", (16, 24)), ("head", (11, 16))]}
    h = x + g.linear(g.rms_norm(x, p["n1"], eps=1e-5), p["wo"])
    gate, up = g.split(g.linear(g.layer_norm(h, p["n2"], None), p["wgu"]), sizes=[24, 24], axis=-1)
    h = g.linear(g.swiglu(gate, up), p["wd"]) + h
    g.output("h", h)
    g.output("logits", g.cast(g.linear(h, p["head"]), dtype="float32"))
    shapes = {"n1": (16,), "wo": (16, 16), "n2": (16,), "wgu": (48, 16), "wd": (16, 24), "head": (11, 16)}
    params = {n: randn(rng, s, dtype, 0.3) for n, s in shapes.items()}
    ex = check(g, {"x": randn(rng, (2, 5, 16), dtype)}, params, optimize=True)
    assert ex.stats()["by_archetype"] == {"matmul": 4}, ex.describe()
    fused = [s.attrs for s in ex.plan.steps if s.op == "fused_linear"]
    assert sorted(a["norm"] for a in fused) == ["layer_norm", "none", "rms_norm"]
    assert [a["activation"] for a in fused if a["activation"] != "none"] == ["swiglu"]
    assert ("+cast" in ex.describe()) == (dtype != "float32")   # float32: the optimizer drops the no-op cast


@pytest.mark.parametrize("rows,k,variant", [(1, 37, "blocks"), (3, 37, "blocks"), (8, 37, "blocks"),
                                            (1, 29, "blocks"), (3, 29, "blocks"), (2, 100, "blocks"),
                                            (1, 37, "stream"), (3, 29, "stream"), (2, 100, "stream")])
def test_decode_rows_stream_the_weight_through_the_gemv(rng, monkeypatch, rows, k, variant):
    """A few rows of one product (decode) run the weight-streaming GEMV (kernels/gemv.py) with every
    fused prologue and epilogue, K not a multiple of its block (37: two 32-wide chunks, the norm
    statistics read first; 100: four, each loaded a chunk ahead; 29: one chunk, the statistics from
    the tile itself); 9 rows go back to the GEMM. "stream": the persistent variant (all of K in one
    chunk, 2 programs walking 2-wide column blocks, each prefetching the next block's rows)."""
    monkeypatch.setenv("KILN_GEMV", variant)
    g = Graph()
    dtype = "bfloat16"
    x = g.input("x", (rows, k), dtype)
    w = g.parameter("w", (10, k), dtype)
    w2 = g.parameter("w2", (20, k), dtype)
    bias = g.parameter("bias", (10,), dtype)
    nw = g.parameter("nw", (k,), dtype)
    nb = g.parameter("nb", (k,), dtype)
    r = g.input("r", (rows, 10), dtype)
    g.output("linear", g.linear(x, w, bias))
    g.output("rms_silu_res", g.fused_linear(x, w, bias, r, nw, None, activation="silu", norm="rms_norm", eps=1e-6))
    g.output("ln_gelu", g.fused_linear(x, w, None, None, nw, nb, activation="gelu_tanh", norm="layer_norm"))
    g.output("unit_swiglu_res", g.fused_linear(x, w2, None, r, nw, None, activation="swiglu", norm="rms_norm",
                                               add_unit_offset=True))
    g.output("geglu", g.fused_linear(x, w2, None, None, None, None, activation="geglu_tanh"))
    g.output("cast", g.cast(g.linear(x, w), dtype="float32"))
    params = {"w": randn(rng, (10, k), dtype, 0.3), "w2": randn(rng, (20, k), dtype, 0.3),
              "bias": randn(rng, (10,), dtype), "nw": randn(rng, (k,), dtype), "nb": randn(rng, (k,), dtype)}
    ex = check(g, {"x": randn(rng, (rows, k), dtype), "r": randn(rng, (rows, 10), dtype)}, params)
    assert ex.describe().count("[gemv]") == 6, ex.describe()
    gemvs = [launch.fn for launch in ex.program.launches if "[gemv]" in launch.label]
    assert all(bool(fn.cfg.get("STREAM")) == (variant == "stream") for fn in gemvs)

    g9 = Graph()
    g9.output("y", g9.linear(g9.input("x", (9, k), dtype), g9.parameter("w", (10, k), dtype)))
    ex9 = check(g9, {"x": randn(rng, (9, k), dtype)}, {"w": params["w"]})
    assert "[gemv]" not in ex9.describe() and "[triton]" in ex9.describe()
