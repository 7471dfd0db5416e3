"""State updates: write new rows into a persistent buffer (a KV cache, a slot mask).

Why an op and not `where(arange == slot, new, past)`: the memory planner can give the
result the cache's own storage when the result becomes the cache's next value (a graph
state), so a decode step writes S rows instead of copying the whole cache; every backend
sees the intent instead of pattern-matching an idiom.
"""

from __future__ import annotations

from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ._rules import expect_same_dtype


def _cache_write(types, attrs):
    cache, new, position = types
    op = "cache_write"
    expect_same_dtype(op, {"cache": cache, "new": new})
    if cache.rank == 0 or new.rank != cache.rank:
        raise GraphError(f"op {op!r}: new {new} must have the rank of cache {cache} (rank >= 1)")
    axis = attrs["axis"]
    if not isinstance(axis, int) or not -cache.rank <= axis < cache.rank:
        raise GraphError(f"op {op!r}: axis {axis!r} is out of range for cache {cache}")
    axis %= cache.rank
    for d, (c, n) in enumerate(zip(cache.shape, new.shape)):
        if (d != axis and c != n) or (d == axis and n > c):
            raise GraphError(f"op {op!r}: new {new} must match cache {cache} except along axis {axis}, "
                             f"where it can have at most {cache.shape[axis]} rows")
    if position.shape != (1,) or position.dtype.name != "int64":
        raise GraphError(f"op {op!r}: position must be int64 of shape (1,), got {position}")
    return cache


register_op(OpSpec(
    "cache_write", "layout", ("cache", "new", "position"), _cache_write, attrs={"axis": 2},
    differentiable=False,
    doc="cache with new written at [position, position + new.shape[axis]) along axis. position "
        "must leave room for new (0 <= position <= cache.shape[axis] - new.shape[axis]); a run "
        "with a position out of range is an error. In place when the result becomes the state "
        "it reads (Graph.assign)."))
