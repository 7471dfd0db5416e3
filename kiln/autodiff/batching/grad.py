"""The scatter-adds: batched src shifts the axis; batched indices unroll (index_add) or broadcast."""

from __future__ import annotations

from ._core import batch_rule, emit, materialize, shift_axis, unrolled


@batch_rule("index_add")
def _index_add(g, node, args, flags, b):
    if flags[0]:
        return unrolled(g, node, args, flags, b)
    return emit(g, "index_add", args, dict(node.attrs, axis=node.attrs["axis"] + 1))


@batch_rule("scatter_add")
def _scatter_add(g, node, args, flags, b):
    idx, src = args
    idx = idx if flags[0] else g.reshape(idx, shape=[1] + list(idx.shape))
    src = materialize(g, src, flags[1], b)
    return emit(g, "scatter_add", [idx, src], dict(node.attrs, axis=shift_axis(node.attrs["axis"], node.inputs[1].ndim)))
