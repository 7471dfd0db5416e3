"""Reductions and softmaxes: the same op with its axes shifted past the batch axis."""

from __future__ import annotations

from ._core import batch_rule, emit, shift_axes, shift_axis


@batch_rule("sum", "mean", "max", "min")
def _reduce(g, node, args, flags, b):
    rank = node.inputs[0].ndim
    return emit(g, node.op, args, dict(node.attrs, axes=shift_axes(node.attrs["axes"], rank)))


@batch_rule("argmax", "softmax", "log_softmax")
def _one_axis(g, node, args, flags, b):
    return emit(g, node.op, args, dict(node.attrs, axis=shift_axis(node.attrs["axis"], node.inputs[0].ndim)))
