"""Convolution, pooling and resampling fold the batch axis into N; batched weights unroll."""

from __future__ import annotations

from ._core import batch_rule, emit, fold, only, unfold, unrolled

_X_ONLY = [f"{p}{d}d" for d in (1, 2, 3) for p in ("max_pool", "avg_pool", "adaptive_avg_pool")]
_CONV = [f"{p}{d}d" for d in (1, 2, 3) for p in ("conv", "conv_transpose")]


@batch_rule(*_X_ONLY, *_CONV, "interpolate", "interpolate_backward")
def _fold_x(g, node, args, flags, b):
    if not only(flags, 0):
        return unrolled(g, node, args, flags, b)
    x = fold(g, args[0], True, b, node.inputs[0].shape[0])
    return [unfold(g, emit(g, node.op, [x] + list(args[1:]), node.attrs)[0], b)]
