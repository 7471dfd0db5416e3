"""Reductions and softmax against torch: axes (None, int, lists, negative), keepdims, every dtype."""

import numpy as np
import pytest
import torch

import kiln
from harness import FLOATS, INTS, check, rand, run_op

TESTED_OPS = {"sum", "mean", "max", "min", "argmax", "softmax", "log_softmax", "sum_squares"}

REDUCERS = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}
DTYPES = {"sum": FLOATS + INTS, "mean": FLOATS, "max": FLOATS + INTS, "min": FLOATS + INTS}
CASES = [  # (shape, axes)
    ((5,), None), ((5,), 0), ((2, 3, 4), None), ((2, 3, 4), -1), ((2, 3, 4), [0, 2]),
    ((2, 3, 4), [-1, -3]), ((1, 4, 1, 3), [0, 1]), ((1, 4, 1, 3), 2), ((3, 1), [1]),
]
PARAMS = [(op, dt) for op in sorted(REDUCERS) for dt in DTYPES[op]]


def _dims(axes, ndim):
    if axes is None:
        return tuple(range(ndim))
    return (axes,) if isinstance(axes, int) else tuple(axes)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape,axes", CASES)
@pytest.mark.parametrize("op,dtype", PARAMS)
def test_reduce(op, dtype, shape, axes, keepdims, rng):
    x = rand(rng, shape, dtype)
    ref = REDUCERS[op]
    check(op, [x], lambda t: ref(t, dim=_dims(axes, t.ndim), keepdim=keepdims), axes=axes, keepdims=keepdims)


def test_sum_of_many_half_values_accumulates_wide(rng):
    """4096 bfloat16 ones sum to 4096 exactly; a bfloat16 accumulator would stall at 256."""
    x = np.ones((4096,), kiln.as_dtype("bfloat16").np_dtype)
    assert float(run_op("sum", [x])) == 4096.0


@pytest.mark.parametrize("dtypes", [("float64",), ("float32",), ("float64", "float32"),
                                    ("bfloat16", "float16", "float32")])
def test_sum_squares_of_many_tensors(dtypes, rng):
    """A float64 scalar: every element of every tensor squared and summed (a gradient norm's square)."""
    shapes = [(3, 4), (7,), (1,), (2, 1, 5)]
    xs = [rand(rng, shape, dtypes[i % len(dtypes)]) for i, shape in enumerate(shapes)]
    check("sum_squares", [xs], lambda ts: sum((t.double() ** 2).sum() for t in ts), out_dtype="float64",
          rtol=1e-12 if dtypes == ("float64",) else 1e-6)   # float32 accumulation within a tensor


def test_sum_squares_names_an_integer_input():
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match=r"sum_squares.*xs\[1\].*float"):
        g.sum_squares([g.input("a", (3,), "float32"), g.input("b", (3,), "int32")])


@pytest.mark.parametrize("op", ["mean"])
def test_mean_rejects_ints(op):
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match="float"):
        g.op(op, g.input("x", (3,), "int32"))


@pytest.mark.parametrize("op", sorted(REDUCERS))
def test_reduce_rejects_bad_axes_and_bool(op):
    g = kiln.Graph()
    x = g.input("x", (2, 3), "float32")
    with pytest.raises(kiln.GraphError, match="axis 2"):
        g.op(op, x, axes=[2])
    with pytest.raises(kiln.GraphError, match="repeated"):
        g.op(op, x, axes=[1, -1])
    with pytest.raises(kiln.GraphError, match="bool"):
        g.op(op, g.input("b", (3,), "bool"))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((2, 3, 4), -1), ((2, 3, 4), 1), ((4, 1, 5), 0)])
@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_argmax(dtype, shape, axis, keepdims, rng):
    x = rand(rng, shape, dtype)
    check("argmax", [x], lambda t: torch.argmax(t, dim=axis, keepdim=keepdims), out_dtype="int64",
          axis=axis, keepdims=keepdims)


@pytest.mark.parametrize("shape,axis", [((7,), 0), ((2, 3, 4), -1), ((2, 3, 4), 1), ((1, 5), -1), ((3, 1), -1)])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, dtype, shape, axis, rng):
    x = rand(rng, shape, dtype) * np.asarray(4, kiln.as_dtype(dtype).np_dtype)
    ref = torch.softmax if op == "softmax" else torch.log_softmax
    check(op, [x], lambda t: ref(t, dim=axis), axis=axis)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_large_and_masked_rows(op, dtype):
    """Huge logits must not overflow; -inf entries get zero weight; an all -inf row is nan as in torch."""
    x = np.array([[1000.0, 999.0, -1000.0, 0.0],
                  [-np.inf, 2.0, -np.inf, 1.0],
                  [-np.inf, -np.inf, -np.inf, -np.inf]]).astype(kiln.as_dtype(dtype).np_dtype)
    ref = torch.softmax if op == "softmax" else torch.log_softmax
    out = check(op, [x], lambda t: ref(t, dim=-1)).astype(np.float64)
    assert np.isfinite(out[0]).all() and np.isnan(out[2]).all()


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_rejects_int_and_bad_axis(op):
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match="float"):
        g.op(op, g.input("i", (3,), "int64"))
    with pytest.raises(kiln.GraphError, match="axis 3"):
        g.op(op, g.input("x", (2, 3), "float32"), axis=3)
