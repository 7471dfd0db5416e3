"""Reductions and softmaxes: the same op with its axes shifted past the batch axis; the softmax
cross-entropy (and its backward) treat every leading axis as rows, so the batch axis is one more."""

from __future__ import annotations

from ._core import batch_rule, emit, materialize, shift_axes, shift_axis


@batch_rule("sum", "mean", "max", "min")
def _reduce(g, node, args, flags, b):
    rank = node.inputs[0].ndim
    return emit(g, node.op, args, dict(node.attrs, axes=shift_axes(node.attrs["axes"], rank)))


@batch_rule("argmax", "softmax", "log_softmax")
def _one_axis(g, node, args, flags, b):
    return emit(g, node.op, args, dict(node.attrs, axis=shift_axis(node.attrs["axis"], node.inputs[0].ndim)))


@batch_rule("softmax_cross_entropy", "softmax_cross_entropy_backward")
def _rows(g, node, args, flags, b):
    return emit(g, node.op, [None if v is None else materialize(g, v, f, b) for v, f in zip(args, flags)],
                node.attrs)
