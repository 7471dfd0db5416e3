"""Matmul kernels; half inputs multiply in float32 and round once."""

from __future__ import annotations

import numpy as np

from ._registry import kernel, up


def _t(a, flag):
    return np.swapaxes(a, -1, -2) if flag else a


@kernel("matmul")
def _matmul(a, b, transpose_a=False, transpose_b=False):
    return np.matmul(_t(up(a), transpose_a), _t(up(b), transpose_b)).astype(a.dtype, copy=False)


@kernel("linear")
def _linear(x, weight, bias=None):
    y = np.matmul(up(x), up(weight).T)
    if bias is not None:
        y += up(bias)
    return y.astype(x.dtype, copy=False)
