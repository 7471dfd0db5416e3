"""Reduction kernels (and the row-wise softmax cross-entropy); half inputs accumulate in float32."""

from __future__ import annotations

import numpy as np

from kiln.errors import InputError

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


@kernel("sum_squares")
def _sum_squares(xs):
    """Float32 sums of squares over rows of 64 elements (float32 for float32 and half tensors:
    no squared copy), the rows' sums added in float64. One float32 BLAS dot over a 28M-element
    bfloat16 tensor lost 4e-4 of the sum (its few mantissa bits make float32 rounding one-sided),
    rows of 64K 3e-6, rows of 64 1e-8, in about the time of one dot."""
    total = 0.0
    for x in xs:
        flat = np.ravel(up(x))
        whole = flat.size // _ROW * _ROW
        rows = flat[:whole].reshape(-1, _ROW)
        total += float(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64))
        rest = flat[whole:]
        total += float(np.dot(rest, rest))
    return np.asarray(total, np.float64)


_ROW = 64


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


def cross_entropy_rows(op: str, labels: np.ndarray, classes: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(valid, safe labels): which rows count, and labels with ignored rows pointing at class 0.
    A label outside [0, classes) that is not ignore_index is an InputError naming it."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= classes))
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{op}: label {int(labels[at])} at {at} is outside [0, {classes}) "
                         f"and is not ignore_index ({ignore_index})")
    return valid, np.where(valid, labels, 0)


@kernel("softmax_cross_entropy")
def _softmax_cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.0):
    x = up(logits)
    valid, safe = cross_entropy_rows("softmax_cross_entropy", labels, x.shape[-1], ignore_index)
    m = np.max(x, axis=-1)
    shift = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(x - shift[..., None]), axis=-1)) + shift
    target = np.take_along_axis(x, safe[..., None], axis=-1)[..., 0]
    if label_smoothing:
        target = (1.0 - label_smoothing) * target + label_smoothing * np.mean(x, axis=-1)
    loss = np.where(valid, lse - target, 0)
    return loss.astype(x.dtype, copy=False), lse.astype(x.dtype, copy=False)
