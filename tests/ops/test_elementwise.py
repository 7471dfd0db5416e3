"""Pointwise ops against torch: every dtype they accept, broadcasting, size-1 and 0-d shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from harness import FLOATS, INTS, TORCH_DTYPES, check, rand, run_op

UNARY_FLOAT = {
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "silu": F.silu, "erf": torch.erf,
}
POSITIVE_ONLY = {"log", "sqrt", "rsqrt"}
UNARY_ANY = {"neg": torch.neg, "abs": torch.abs, "relu": torch.relu}
BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum,
}
FLOAT_ONLY_BINARY = {"div", "pow"}
COMPARE = {
    "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
    "greater": torch.gt, "greater_equal": torch.ge,
}
LOGICAL = {"logical_and": torch.logical_and, "logical_or": torch.logical_or}

TESTED_OPS = (set(UNARY_FLOAT) | set(UNARY_ANY) | set(BINARY) | set(COMPARE) | set(LOGICAL)
              | {"gelu", "logical_not", "where", "cast", "clamp", "swiglu", "geglu"})

UNARY_SHAPES = [(), (5,), (2, 3, 4), (1, 7, 1)]
BINARY_SHAPES = [((3, 4), (3, 4)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5,), (1,)), ((1, 3, 1), (2, 1, 5))]
ALL_DTYPES = FLOATS + INTS + ("bool",)


@pytest.mark.parametrize("shape", UNARY_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", sorted(UNARY_FLOAT))
def test_unary_float(op, dtype, shape, rng):
    x = rand(rng, shape, dtype, 0.1, 4.0) if op in POSITIVE_ONLY else rand(rng, shape, dtype)
    check(op, [x], UNARY_FLOAT[op])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["sigmoid", "silu", "tanh", "erf", "gelu"])
def test_saturating_ops_at_extremes(op, dtype):
    """Large |x| must saturate, not overflow to nan (sigmoid splits by sign for this)."""
    x = np.array([-1e4, -300.0, -88.0, -20.0, 0.0, 20.0, 88.0, 300.0, 1e4])
    x = x.astype(kiln.as_dtype(dtype).np_dtype)  # float16 turns 1e4 into 10000 and 300 into 300
    ref = F.gelu if op == "gelu" else {"sigmoid": torch.sigmoid, "silu": F.silu, "tanh": torch.tanh,
                                       "erf": torch.erf}[op]
    out = check(op, [x], ref)
    assert np.isfinite(out.astype(np.float64)).all()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(7,), (2, 1, 5)])
def test_gelu(approximate, dtype, shape, rng):
    x = rand(rng, shape, dtype) * np.asarray(3, kiln.as_dtype(dtype).np_dtype)
    check("gelu", [x], lambda t: F.gelu(t, approximate=approximate), approximate=approximate)


def test_gelu_rejects_unknown_approximation(rng):
    with pytest.raises(ValueError, match="approximate"):
        run_op("gelu", [rand(rng, (3,))], approximate="fast")


@pytest.mark.parametrize("shape", UNARY_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("op", sorted(UNARY_ANY))
def test_unary_any(op, dtype, shape, rng):
    check(op, [rand(rng, shape, dtype)], UNARY_ANY[op])


@pytest.mark.parametrize("op", sorted(UNARY_ANY) + ["exp"])
def test_unary_rejects_bool(op):
    g = kiln.Graph()
    x = g.input("x", (3,), "bool")
    with pytest.raises(kiln.GraphError, match=op):
        g.op(op, x)


def _binary_inputs(op, rng, sa, sb, dtype):
    if op == "pow":
        return rand(rng, sa, dtype, 0.2, 3.0), rand(rng, sb, dtype, -2.0, 2.0)
    a = rand(rng, sa, dtype)
    if op == "div":  # keep denominators away from zero
        b = rand(rng, sb, dtype, 0.5, 2.0)
        sign = np.where(rng.random(sb) < 0.5, -1, 1).astype(b.dtype)
        return a, b * sign
    return a, rand(rng, sb, dtype)


@pytest.mark.parametrize("shapes", BINARY_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary(op, dtype, shapes, rng):
    if op in FLOAT_ONLY_BINARY and dtype in INTS:
        g = kiln.Graph()
        a, b = g.input("a", (2,), dtype), g.input("b", (2,), dtype)
        with pytest.raises(kiln.GraphError, match="float"):
            g.op(op, a, b)
        return
    check(op, list(_binary_inputs(op, rng, *shapes, dtype)), BINARY[op])


@pytest.mark.parametrize("shapes", BINARY_SHAPES[:3])
@pytest.mark.parametrize("dtype", FLOATS + INTS + ("bool",))
@pytest.mark.parametrize("op", sorted(COMPARE))
def test_compare(op, dtype, shapes, rng):
    if dtype == "bool":
        a, b = rand(rng, shapes[0], "bool"), rand(rng, shapes[1], "bool")
    else:  # small integers, so equal elements actually occur
        np_dt = kiln.as_dtype(dtype).np_dtype
        a = rng.integers(0, 3, shapes[0]).astype(np_dt)
        b = rng.integers(0, 3, shapes[1]).astype(np_dt)
    check(op, [a, b], COMPARE[op], out_dtype="bool")


@pytest.mark.parametrize("shapes", BINARY_SHAPES)
@pytest.mark.parametrize("op", sorted(LOGICAL))
def test_logical(op, shapes, rng):
    check(op, [rand(rng, shapes[0], "bool"), rand(rng, shapes[1], "bool")], LOGICAL[op])


@pytest.mark.parametrize("shape", UNARY_SHAPES)
def test_logical_not(shape, rng):
    check("logical_not", [rand(rng, shape, "bool")], torch.logical_not)


@pytest.mark.parametrize("op", sorted(LOGICAL) + ["logical_not"])
def test_logical_rejects_non_bool(op):
    g = kiln.Graph()
    xs = [g.input(n, (2,), "float32") for n in ("a", "b")[: 1 if op == "logical_not" else 2]]
    with pytest.raises(kiln.GraphError, match="bool"):
        g.op(op, *xs)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4), (3, 4)), ((4,), (3, 1), (1, 4)), ((2, 1, 3), (), (5, 1))])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_where(dtype, shapes, rng):
    c = rand(rng, shapes[0], "bool")
    check("where", [c, rand(rng, shapes[1], dtype), rand(rng, shapes[2], dtype)], torch.where, out_dtype=dtype)


def test_where_needs_bool_condition_and_same_dtypes():
    g = kiln.Graph()
    c, a, b = g.input("c", (2,), "float32"), g.input("a", (2,), "float32"), g.input("b", (2,), "float16")
    with pytest.raises(kiln.GraphError, match="cond"):
        g.where(c, a, a)
    with pytest.raises(kiln.GraphError, match="float16"):
        g.where(g.input("c2", (2,), "bool"), a, b)


def _cast_source(rng, src, dst):
    """Values every (src, dst) pair converts the same way in NumPy and torch: in range, some zeros."""
    shape = (3, 5)
    if src == "bool":
        return rand(rng, shape, "bool")
    if kiln.as_dtype(src).is_float:
        lo = 0.0 if dst in ("uint8",) else -100.0
        x = rng.uniform(lo, 100.0, shape)
        x[0, :2] = 0.0
        return x.astype(kiln.as_dtype(src).np_dtype)
    return rand(rng, shape, src, 0 if src == "uint8" else -100, 100)


@pytest.mark.parametrize("dst", ALL_DTYPES)
@pytest.mark.parametrize("src", ALL_DTYPES)
def test_cast(src, dst, rng):
    check("cast", [_cast_source(rng, src, dst)], lambda t: t.to(TORCH_DTYPES[dst]), out_dtype=dst,
          rtol=0, atol=0, dtype=dst)


@pytest.mark.parametrize("bounds", [(-0.5, None), (None, 0.7), (-0.3, 0.4)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_clamp_float(bounds, dtype, rng):
    lo, hi = bounds
    check("clamp", [rand(rng, (4, 5), dtype)], lambda t: torch.clamp(t, lo, hi), min=lo, max=hi)


@pytest.mark.parametrize("bounds", [(-2, None), (None, 3), (1, 5)])
@pytest.mark.parametrize("dtype", INTS)
def test_clamp_int(bounds, dtype, rng):
    lo, hi = bounds
    if dtype == "uint8" and lo is not None and lo < 0:
        lo = 2
    check("clamp", [rand(rng, (4, 5), dtype)], lambda t: torch.clamp(t, lo, hi), min=lo, max=hi)


def test_clamp_rejects_fractional_bound_on_int_tensor_and_no_bounds():
    g = kiln.Graph()
    x = g.input("x", (3,), "int32")
    with pytest.raises(kiln.GraphError, match="min"):
        g.clamp(x, min=0.5)
    with pytest.raises(kiln.GraphError, match="min"):
        g.clamp(x)


@pytest.mark.parametrize("shapes", [((3, 8), (3, 8)), ((2, 1, 6), (4, 1)), ((1, 5), (3, 5))])
@pytest.mark.parametrize("dtype", FLOATS)
def test_swiglu(shapes, dtype, rng):
    check("swiglu", [rand(rng, shapes[0], dtype), rand(rng, shapes[1], dtype)], lambda g, u: F.silu(g) * u)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shapes", [((3, 8), (3, 8)), ((2, 1, 6), (4, 1))])
@pytest.mark.parametrize("dtype", FLOATS)
def test_geglu(shapes, dtype, approximate, rng):
    check("geglu", [rand(rng, shapes[0], dtype), rand(rng, shapes[1], dtype)],
          lambda g, u: F.gelu(g, approximate=approximate) * u, approximate=approximate)


@pytest.mark.parametrize("op", ["add", "mul", "swiglu", "maximum"])
def test_binary_rejects_mixed_dtypes_and_bad_broadcast(op):
    g = kiln.Graph()
    a, b = g.input("a", (2, 3), "float32"), g.input("b", (2, 3), "bfloat16")
    with pytest.raises(kiln.GraphError, match="bfloat16"):
        g.op(op, a, b)
    with pytest.raises(kiln.GraphError, match=r"\(2, 3\).*\(4,\)"):
        g.op(op, a, g.input("c", (4,), "float32"))
