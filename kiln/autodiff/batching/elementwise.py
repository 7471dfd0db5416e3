"""Pointwise ops batch by aligning ranks: a batched operand becomes [B, 1.., *shape]."""

from __future__ import annotations

from ._core import align, emit


def pointwise_rule(g, node, args, flags, b):
    rank = node.outputs[0].ndim
    return emit(g, node.op, [align(g, v, f, rank) if v is not None else None for v, f in zip(args, flags)],
                node.attrs)
