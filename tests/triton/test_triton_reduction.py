"""Reduction archetype: softmax, norms (with fused residual), sum/mean/max/min/argmax vs NumPy."""

import numpy as np
import pytest

from helpers import check, randn
from kiln.ir import Graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_softmax_log_softmax_and_norms(rng, dtype):
    g = Graph()
    x = g.input("x", (3, 2, 40), dtype)
    w = g.parameter("w", (40,), dtype)
    b = g.parameter("b", (40,), dtype)
    g.output("softmax", g.softmax(x, axis=-1))
    g.output("log_softmax", g.log_softmax(x, axis=2))
    g.output("softmax_axis1", g.softmax(x, axis=1))          # torch fallback
    g.output("rms", g.rms_norm(x, w, eps=1e-6))
    g.output("rms_gemma", g.rms_norm(x, w, eps=1e-6, add_unit_offset=True))
    g.output("rms_plain", g.rms_norm(x, None))
    g.output("ln", g.layer_norm(x, w, b, eps=1e-5))
    ex = check(g, {"x": randn(rng, (3, 2, 40), dtype, 3.0)},
               {"w": randn(rng, (40,), dtype), "b": randn(rng, (40,), dtype)})
    assert ex.stats()["fallbacks"] == {"softmax [torch]": 1}


def test_rows_longer_than_one_block_loop(rng):
    g = Graph()
    x = g.input("x", (2, 20000))
    w = g.parameter("w", (20000,))
    g.output("softmax", g.softmax(x))
    g.output("ln", g.layer_norm(x, w, None))
    g.output("rms", g.rms_norm(x, w))
    g.output("sum", g.sum(x, axes=[-1]))
    check(g, {"x": randn(rng, (2, 20000), scale=4.0)}, {"w": randn(rng, (20000,))})


def test_masked_softmax_rows(rng):
    g = Graph()
    x = g.input("x", (3, 8))
    g.output("y", g.softmax(x))
    g.output("z", g.log_softmax(x))
    v = randn(rng, (3, 8))
    v[0, :3] = -np.inf
    v[1, :] = -np.inf   # a fully masked row: NaN, as NumPy gives
    with np.errstate(invalid="ignore"):
        check(g, {"x": v})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sum_mean_max_min_argmax(rng, dtype):
    g = Graph()
    x = g.input("x", (4, 3, 5, 6), dtype)
    g.output("sum_last", g.sum(x, axes=[-1]))
    g.output("mean_mid", g.mean(x, axes=[1, 2], keepdims=True))
    g.output("max_first", g.max(x, axes=[0]))
    g.output("min_all", g.min(x))
    g.output("sum_gap", g.sum(x, axes=[0, 2]))                 # not consecutive: torch fallback
    g.output("argmax", g.argmax(x, axis=2))
    g.output("argmax_last", g.argmax(x, axis=-1, keepdims=True))
    check(g, {"x": randn(rng, (4, 3, 5, 6), dtype)})


def test_integer_reductions_and_nan_max(rng):
    g = Graph()
    i = g.input("i", (5, 7), "int32")
    x = g.input("x", (2, 4))
    g.output("isum", g.sum(i, axes=[1]))
    g.output("imax", g.max(i, axes=[0]))        # torch fallback
    g.output("fmax", g.max(x, axes=[1]))
    g.output("amax", g.argmax(x, axis=1))
    xv = randn(rng, (2, 4))
    xv[0, 2] = np.nan
    check(g, {"i": rng.integers(-100, 100, (5, 7)).astype(np.int32), "x": xv})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_argmax_over_a_vocabulary_splits_into_chunks(rng, dtype):
    """Greedy decoding's argmax over ~10K logits runs as per-chunk winners + a combine launch; the first
    maximum still wins across chunk boundaries (ties planted in two chunks) and NaN counts as largest."""
    g = Graph()
    x = g.input("x", (3, 10000), dtype)
    g.output("ids", g.argmax(x, axis=-1))
    xv = randn(rng, (3, 10000), dtype)
    xv[0, 5000] = xv[0, 9000] = 50.0     # a tie across chunks: the earlier one
    xv[1, 4095] = xv[1, 4096] = 50.0     # a tie at a chunk boundary
    xv[2, 7777] = np.nan
    ex = check(g, {"x": xv})
    assert "argmax [3 chunks]" in ex.describe(), ex.describe()


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("shape", [(1, 1000, 1), (1, 257, 5), (3, 70, 2)])
def test_few_programs_split_their_rows_over_a_second_launch(op, shape):
    import torch

    from kiln.backends.triton.kernels.reduction import Reduce
    outer, R, inner = shape
    k = Reduce(op, outer, R, inner, torch.float32, num_sms=1, block_r=8)
    assert k.splits > 1 and k.chunk % 8 == 0
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(outer, R, inner, generator=torch.Generator().manual_seed(R)).to(dev)
    if op in ("max", "min"):
        x[0, R // 3, 0] = float("nan")          # NaN propagates through the partials
    out = torch.empty(outer, inner, device=dev)
    k(x, out, *[torch.empty(shape, dtype=dtype, device=dev) for shape, dtype in k.scratch()])
    ref = {"sum": lambda t: t.sum(1), "mean": lambda t: t.mean(1),
           "max": lambda t: t.amax(1), "min": lambda t: t.amin(1)}[op](x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4, equal_nan=True)


def test_a_full_reduction_of_a_large_tensor_splits(rng):
    g = Graph()
    x = g.input("x", (600, 300))
    g.output("sum_sq", g.sum(g.mul(x, x)))
    g.output("mean_cols", g.mean(x, axes=[0]))
    ex = check(g, {"x": randn(rng, (600, 300))})
    labels = [launch.label for launch in ex.program.launches]
    assert any(label.startswith("sum [") and "splits]" in label for label in labels), labels


def test_sum_squares_of_many_tensors_in_two_launches(rng):
    """The gradient norm's reduction: tensors of three dtypes and sizes around a program's 128
    elements (the interpreter's block), one of them a transposed view (copied contiguous first),
    as one Launch (a partial-sums kernel per dtype, then the total) against float64 NumPy."""
    g = Graph()
    specs = [((1,), "float32"), ((127,), "bfloat16"), ((128,), "float32"), ((129,), "float32"),
             ((3, 100), "bfloat16"), ((2, 3), "float64"), ((40, 9), "float32")]
    xs = [g.input(f"x{i}", shape, dt) for i, (shape, dt) in enumerate(specs)]
    xs[-1] = g.transpose(xs[-1], perm=[1, 0])
    g.output("s", g.sum_squares(xs))
    feeds = {f"x{i}": randn(rng, shape, dt) for i, (shape, dt) in enumerate(specs)}
    ex = check(g, feeds)
    labels = [launch.label for launch in ex.program.launches]
    assert labels.count("sum_squares [7 tensors]") == 1, labels
    want = sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in feeds.values())
    got = ex.run({ex.plan.inputs[n][0]: v for n, v in feeds.items()}, {})["s"]
    assert got.dtype == np.float64 and float(got) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rms_norm_backward_rows_spread_over_programs(rng, dtype):
    """rms_norm's fused backward: 300 rows over the programs (several rows each, their dweight
    partials summed by a second launch), with a weight, Gemma's unit offset, and none."""
    g = Graph()
    x = g.input("x", (3, 100, 24), dtype)
    dy = g.input("dy", (3, 100, 24), dtype)
    w = g.parameter("w", (24,), dtype)
    dx, dw = g.rms_norm_backward(x, w, dy, eps=1e-5, weight_grad=True)
    g.output("dx", dx)
    g.output("dw", dw)
    g.output("dx_gemma", g.rms_norm_backward(x, w, dy, eps=1e-6, add_unit_offset=True))
    g.output("dx_plain", g.rms_norm_backward(x, None, dy))
    ex = check(g, {"x": randn(rng, (3, 100, 24), dtype, 2.0), "dy": randn(rng, (3, 100, 24), dtype)},
               {"w": randn(rng, (24,), dtype)})
    assert not ex.stats()["fallbacks"]
    assert [launch.label for launch in ex.program.launches].count("rms_norm_backward") == 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rms_norm_backward_adds_the_residual_gradient_in_its_launch(rng, dtype):
    """dx + the residual stream's gradient is one launch (the Plan's norm_backward_add kernel),
    with and without dweight (whose reader comes first in the graph); a dx read elsewhere too
    keeps its own add."""
    g = Graph()
    x, dy, r = (g.input(n, (3, 50, 24), dtype) for n in ("x", "dy", "r"))
    w = g.parameter("w", (24,), dtype)
    dx, dw = g.rms_norm_backward(x, w, dy, eps=1e-5, weight_grad=True)
    g.output("dw", g.mul(dw, dw))   # read before the add: the Plan moves the add up to the norm
    g.output("sum", g.add(r, dx))
    g.output("sum_plain", g.add(g.rms_norm_backward(x, None, dy), r))
    shared = g.rms_norm_backward(x, w, dy, add_unit_offset=True)
    g.output("sum_shared", g.add(shared, r))
    g.output("shared", shared)
    feeds = {n: randn(rng, (3, 50, 24), dtype) for n in ("x", "dy", "r")}
    ex = check(g, feeds, {"w": randn(rng, (24,), dtype)})
    labels = [launch.label for launch in ex.program.launches]
    assert labels.count("rms_norm_backward+add") == 2 and labels.count("rms_norm_backward") == 1, labels
