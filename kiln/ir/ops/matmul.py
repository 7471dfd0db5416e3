"""Matrix products: batched matmul with transpose flags, and linear (x @ W^T + b)."""

from __future__ import annotations

from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ..shapes import broadcast_shapes
from ._rules import expect_float, expect_rank, expect_same_dtype, tt


def matmul_shape(a, b, ta: bool, tb: bool, op="matmul") -> tuple[int, ...]:
    if len(a) < 2 or len(b) < 2:
        raise GraphError(f"op {op!r}: inputs need rank >= 2, got {tuple(a)} and {tuple(b)}")
    m, ka = (a[-1], a[-2]) if ta else (a[-2], a[-1])
    kb, n = (b[-1], b[-2]) if tb else (b[-2], b[-1])
    if ka != kb:
        raise GraphError(f"op {op!r}: contraction dims differ: a {tuple(a)} (transpose_a={ta}) has K={ka}, "
                         f"b {tuple(b)} (transpose_b={tb}) has K={kb}")
    return broadcast_shapes(a[:-2], b[:-2]) + (m, n)


def _matmul(types, attrs):
    a, b = types
    expect_same_dtype("matmul", {"a": a, "b": b})
    if a.dtype.name == "bool":
        raise GraphError(f"op 'matmul': bool inputs are not supported, got {a}")
    return tt(matmul_shape(a.shape, b.shape, attrs["transpose_a"], attrs["transpose_b"]), a.dtype)


register_op(OpSpec("matmul", "matmul", ("a", "b"), _matmul, attrs={"transpose_a": False, "transpose_b": False}))


def _linear(types, attrs):
    x, w, b = types
    expect_float("linear", "x", x)
    expect_same_dtype("linear", {"x": x, "weight": w, "bias": b})
    expect_rank("linear", "weight", w, 2)
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise GraphError(f"op 'linear': x {x} has {x.shape[-1] if x.rank else 'no'} features, "
                         f"weight {w} expects {w.shape[1]} (weight is [out, in])")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise GraphError(f"op 'linear': bias must have shape ({w.shape[0]},), got {b}")
    return tt(x.shape[:-1] + (w.shape[0],), x.dtype)


register_op(OpSpec("linear", "matmul", ("x", "weight", "bias?"), _linear))
