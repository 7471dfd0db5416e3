"""Reduction kernels; half inputs accumulate in float32."""

from __future__ import annotations

import numpy as np

from ._registry import kernel, up


def _axes(axes, ndim):
    if axes is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in ([axes] if isinstance(axes, int) else axes))


def _reducer(fn):
    def run(x, axes=None, keepdims=False):
        res = fn(up(x), axis=_axes(axes, x.ndim), keepdims=keepdims)
        return np.asarray(res).astype(x.dtype, copy=False)
    return run


kernel("sum")(_reducer(np.sum))
kernel("mean")(_reducer(np.mean))
kernel("max")(_reducer(np.max))
kernel("min")(_reducer(np.min))


@kernel("argmax")
def _argmax(x, axis=-1, keepdims=False):
    return np.asarray(np.argmax(up(x), axis=axis, keepdims=keepdims)).astype(np.int64)


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    s = x - np.where(np.isfinite(m), m, 0)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


@kernel("softmax")
def _softmax(x, axis=-1):
    return softmax(up(x), axis).astype(x.dtype, copy=False)


@kernel("log_softmax")
def _log_softmax(x, axis=-1):
    return log_softmax(up(x), axis).astype(x.dtype, copy=False)
