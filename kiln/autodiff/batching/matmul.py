"""matmul batches through its own batch broadcasting; linear when only x (and residual) are batched."""

from __future__ import annotations

from ._core import align, batch_rule, emit, only, unrolled


@batch_rule("matmul")
def _matmul(g, node, args, flags, b):
    batch_rank = node.outputs[0].ndim - 2
    # a batched [B, *shape] gets size-1 axes so that B lines up in front of the other batch dims
    return emit(g, "matmul", [align(g, v, f, batch_rank + 2) for v, f in zip(args, flags)], node.attrs)


@batch_rule("linear")
def _linear(g, node, args, flags, b):
    if not only(flags, 0):
        return unrolled(g, node, args, flags, b)
    return emit(g, "linear", args, node.attrs)


@batch_rule("fused_linear")
def _fused_linear(g, node, args, flags, b):
    if not only(flags, 0, 3):
        return unrolled(g, node, args, flags, b)
    rank = node.outputs[0].ndim
    x, res = args[0], args[3]
    if not flags[0]:
        x = g.broadcast_to(x, shape=[b] + list(x.shape))
    if res is not None:
        res = align(g, res, flags[3], rank)
    return emit(g, "fused_linear", [x, args[1], args[2], res, args[4], args[5]], node.attrs)
