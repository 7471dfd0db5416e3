"""The batching-rule table and the helpers rules share."""

from __future__ import annotations

from typing import Callable

from kiln.ir import Graph, Node, Value
from kiln.ir.shapes import norm_axes, norm_axis

BATCH_RULES: dict[str, Callable] = {}


def batch_rule(*names: str):
    def deco(fn):
        for n in names:
            if n in BATCH_RULES:
                raise ValueError(f"batching rule for op {n!r} registered twice")
            BATCH_RULES[n] = fn
        return fn
    return deco


def emit(g: Graph, op: str, args, attrs) -> list[Value]:
    out = g.op(op, *args, **attrs)
    return list(out) if isinstance(out, tuple) else [out]


def materialize(g: Graph, v: Value, flag: bool, b: int) -> Value:
    """v with the batch axis, broadcast if it had none."""
    return v if flag else g.broadcast_to(v, shape=[b] + list(v.shape))


def align(g: Graph, v: Value, flag: bool, rank: int) -> Value:
    """A batched v of per-example rank r as [B, 1 x (rank - r), *shape], so it broadcasts like
    the per-example value would against rank-`rank` operands; unbatched values are left alone."""
    if not flag:
        return v
    r = v.ndim - 1
    if r >= rank:
        return v
    return g.reshape(v, shape=[v.shape[0]] + [1] * (rank - r) + list(v.shape[1:]))


def shift_axis(axis: int, rank: int) -> int:
    return norm_axis(axis, rank) + 1


def shift_axes(axes, rank: int) -> list[int]:
    return [a + 1 for a in norm_axes(axes, rank)]


def fold(g: Graph, v: Value, flag: bool, b: int, n: int, broadcastable: bool = False) -> Value:
    """[B, n, ...] -> [B*n, ...] for a value whose per-example leading axis is n (or, where the op
    broadcasts it, 1: an unbatched one of those stays as it is)."""
    if not flag:
        if broadcastable and v.shape[0] == 1:
            return v
        v = g.broadcast_to(v, shape=[b] + list(v.shape))
    elif v.shape[1] != n:
        v = g.broadcast_to(v, shape=[b, n] + list(v.shape[2:]))
    return g.reshape(v, shape=[b * n] + list(v.shape[2:]))


def unfold(g: Graph, v: Value, b: int) -> Value:
    return g.reshape(v, shape=[b, v.shape[0] // b] + list(v.shape[1:]))


def unrolled(g: Graph, node: Node, args, flags, b: int) -> list[Value]:
    """The fallback: run the op once per batch element and concatenate the results."""
    def take(v, flag, i):
        if not flag:
            return v
        one = g.slice(v, axes=[0], starts=[i], ends=[i + 1])
        return g.reshape(one, shape=list(v.shape[1:]))

    per_output = [[] for _ in node.outputs]
    for i in range(b):
        ins = [None if x is None else [take(v, f, i) for v, f in zip(x, fl)] if isinstance(x, list)
               else take(x, fl, i) for x, fl in zip(args, flags)]
        for j, o in enumerate(emit(g, node.op, ins, node.attrs)):
            per_output[j].append(g.reshape(o, shape=[1] + list(o.shape)))
    return [parts[0] if b == 1 else g.concat(parts, axis=0) for parts in per_output]


def only(flags, *positions) -> bool:
    """True if no input outside `positions` is batched."""
    for i, f in enumerate(flags):
        if i in positions:
            continue
        if f if isinstance(f, bool) else any(f):
            return False
    return True
