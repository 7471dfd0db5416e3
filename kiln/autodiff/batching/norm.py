"""Norms batch directly over x (group_norm folds the batch axis into N); batched weights unroll,
as does rms_norm_backward (its weight gradient sums over every row, the batch's too)."""

from __future__ import annotations

from ._core import batch_rule, emit, fold, only, unfold, unrolled


@batch_rule("layer_norm", "rms_norm")
def _last_axis_norm(g, node, args, flags, b):
    if not only(flags, 0):
        return unrolled(g, node, args, flags, b)
    return emit(g, node.op, args, node.attrs)


@batch_rule("group_norm")
def _group_norm(g, node, args, flags, b):
    if not only(flags, 0):
        return unrolled(g, node, args, flags, b)
    x = fold(g, args[0], True, b, node.inputs[0].shape[0])
    return [unfold(g, emit(g, "group_norm", [x] + args[1:], node.attrs)[0], b)]


@batch_rule("rms_norm_backward")
def _rms_norm_backward(g, node, args, flags, b):
    return unrolled(g, node, args, flags, b)
