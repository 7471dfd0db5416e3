"""Graph-building helpers the rule modules share: broadcasting, zeros, upcasts."""

from __future__ import annotations

from typing import Sequence

from kiln.ir import Graph, Value
from kiln.ir.shapes import norm_axes

HALF = ("float16", "bfloat16")


def graph_of(node) -> Graph:
    return node.outputs[0].graph


def zeros(g: Graph, shape: Sequence[int], dtype) -> Value:
    """A zero tensor (a broadcast scalar: no memory beyond one element)."""
    return g.broadcast_to(g.scalar(0, dtype), shape=list(shape))


def expand(g: Graph, v: Value, shape: Sequence[int]) -> Value:
    """Broadcast v to `shape` (no-op when it already has it)."""
    return v if tuple(v.shape) == tuple(shape) else g.broadcast_to(v, shape=list(shape))


def unbroadcast(g: Graph, ct: Value, shape: Sequence[int]) -> Value:
    """Sum a cotangent of a broadcast result back to the operand's `shape`."""
    shape = tuple(shape)
    if tuple(ct.shape) == shape:
        return ct
    lead = ct.ndim - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and ct.shape[lead + i] != 1]
    if axes:
        ct = g.sum(ct, axes=axes)
    return ct if tuple(ct.shape) == shape else g.reshape(ct, shape=list(shape))


def add_terms(g: Graph, terms, shape: Sequence[int]) -> Value | None:
    """The sum of the non-None terms, broadcast to `shape`; None when every term is None."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    out = terms[0]
    for t in terms[1:]:
        out = g.add(out, t)
    return expand(g, out, shape)


def keepdims_shape(shape: Sequence[int], axes) -> list[int]:
    ax = norm_axes(axes, len(shape))
    return [1 if i in ax else d for i, d in enumerate(shape)]


def unreduce(g: Graph, ct: Value, x_shape: Sequence[int], axes, keepdims: bool) -> Value:
    """Broadcast the cotangent of a reduction over `axes` back to the input's shape."""
    if not keepdims:
        ct = g.reshape(ct, shape=keepdims_shape(x_shape, axes))
    return expand(g, ct, x_shape)


def reduced_count(x_shape: Sequence[int], axes) -> int:
    n = 1
    for a in norm_axes(axes, len(x_shape)):
        n *= x_shape[a]
    return n


def upcast(g: Graph, v: Value | None) -> Value | None:
    """float32 copy of a half-precision value (reductions inside rules accumulate wide)."""
    if v is not None and v.dtype.name in HALF:
        return g.cast(v, dtype="float32")
    return v


def downcast(g: Graph, v: Value | None, dtype) -> Value | None:
    if v is not None and v.dtype != dtype:
        return g.cast(v, dtype=dtype.name if hasattr(dtype, "name") else dtype)
    return v


def rank_axes(rank: int, exclude: Sequence[int] = ()) -> list[int]:
    return [a for a in range(rank) if a not in exclude]
