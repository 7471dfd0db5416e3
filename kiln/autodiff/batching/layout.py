"""Layout and gather ops: the same op with axes shifted by one, or rewritten around the batch axis."""

from __future__ import annotations

from kiln.ir.shapes import norm_axis

from ._core import align, batch_rule, emit, materialize, shift_axis, unrolled


@batch_rule("reshape")
def _reshape(g, node, args, flags, b):
    return [g.reshape(args[0], shape=[b] + list(node.outputs[0].shape))]


@batch_rule("transpose")
def _transpose(g, node, args, flags, b):
    rank = node.inputs[0].ndim
    return [g.transpose(args[0], perm=[0] + [norm_axis(p, rank) + 1 for p in node.attrs["perm"]])]


@batch_rule("broadcast_to")
def _broadcast_to(g, node, args, flags, b):
    shape = list(node.attrs["shape"])
    return [g.broadcast_to(align(g, args[0], True, len(shape)), shape=[b] + shape)]


@batch_rule("concat")
def _concat(g, node, args, flags, b):
    xs = [materialize(g, v, f, b) for v, f in zip(args[0], flags[0])]
    return [g.concat(xs, axis=shift_axis(node.attrs["axis"], node.inputs[0][0].ndim))]


@batch_rule("slice")
def _slice(g, node, args, flags, b):
    rank = node.inputs[0].ndim
    return emit(g, "slice", args, dict(node.attrs, axes=[norm_axis(a, rank) + 1 for a in node.attrs["axes"]]))


@batch_rule("split", "repeat_interleave")
def _axis_op(g, node, args, flags, b):
    return emit(g, node.op, args, dict(node.attrs, axis=shift_axis(node.attrs["axis"], node.inputs[0].ndim)))


@batch_rule("pad")
def _pad(g, node, args, flags, b):
    return emit(g, "pad", args, dict(node.attrs, pads=[[0, 0]] + [list(p) for p in node.attrs["pads"]]))


@batch_rule("gather")
def _gather(g, node, args, flags, b):
    x, idx = args
    rank = node.inputs[0].ndim
    axis = norm_axis(node.attrs["axis"], rank)
    if flags[0] and not flags[1]:
        return [g.gather(x, idx, axis=axis + 1)]
    if flags[1] and not flags[0]:  # the batch axis of idx lands at `axis`: move it to the front
        y = g.gather(x, idx, axis=axis)
        perm = [axis] + [i for i in range(y.ndim) if i != axis]
        return [g.transpose(y, perm=perm) if axis else y]
    return unrolled(g, node, args, flags, b)


@batch_rule("take_along_axis")
def _take_along_axis(g, node, args, flags, b):
    x, idx = args
    rank = node.inputs[0].ndim
    x = x if flags[0] else g.reshape(x, shape=[1] + list(x.shape))
    idx = idx if flags[1] else g.reshape(idx, shape=[1] + list(idx.shape))
    return [g.take_along_axis(x, idx, axis=shift_axis(node.attrs["axis"], rank))]


@batch_rule("embedding")
def _embedding(g, node, args, flags, b):
    if flags[1]:
        return unrolled(g, node, args, flags, b)
    return emit(g, "embedding", args, node.attrs)


@batch_rule("one_hot", "pixel_shuffle", "pixel_unshuffle")
def _leading_dims_free(g, node, args, flags, b):
    return emit(g, node.op, args, node.attrs)



