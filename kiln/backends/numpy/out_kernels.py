"""Kernels that write straight into a preallocated output (`out=`), for the Plan executor.

Each returns True when it handled the step, False to let the executor fall back to the
reference kernel plus one copy into the slot. They compute the same operations in the
same order as the reference kernels, so results match bit for bit; they only apply when
no precision upcast is involved (half-precision steps take the reference path).
"""

from __future__ import annotations

import numpy as np

from .kernels._registry import is_half

_UFUNC2 = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power,
           "maximum": np.maximum, "minimum": np.minimum, "equal": np.equal, "not_equal": np.not_equal,
           "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
           "greater_equal": np.greater_equal, "logical_and": np.logical_and, "logical_or": np.logical_or}
_UFUNC1 = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
           "neg": np.negative, "abs": np.abs}


def _wide(*arrays) -> bool:
    return not any(a is not None and is_half(a) for a in arrays)


def _binary(ufunc):
    def run(out, a, b):
        if not _wide(a, b):
            return False
        ufunc(a, b, out=out)
        return True
    return run


def _unary(ufunc):
    def run(out, x):
        if not _wide(x):
            return False
        ufunc(x, out=out)
        return True
    return run


def _rsqrt(out, x):
    if not _wide(x):
        return False
    np.sqrt(x, out=out)
    np.true_divide(1.0, out, out=out)
    return True


def _relu(out, x):
    if not _wide(x):
        return False
    np.maximum(x, np.zeros((), x.dtype), out=out)
    return True


def _t(a, flag):
    return np.swapaxes(a, -1, -2) if flag else a


def _matmul(out, a, b, transpose_a=False, transpose_b=False):
    if not _wide(a, b):
        return False
    np.matmul(_t(a, transpose_a), _t(b, transpose_b), out=out)
    return True


def _linear(out, x, weight, bias=None):
    if not _wide(x, weight, bias):
        return False
    np.matmul(x, weight.T, out=out)
    if bias is not None:
        np.add(out, bias, out=out)
    return True


def _fused_linear(out, x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None,
                  activation="none", norm="none", eps=1e-5, add_unit_offset=False):
    if activation != "none" or norm != "none" or not _wide(x, weight, bias, residual):
        return False
    np.matmul(x, weight.T, out=out)
    if bias is not None:
        np.add(out, bias, out=out)
    if residual is not None:
        np.add(out, residual, out=out)
    return True


def _softmax(out, x, axis=-1):
    if not _wide(x):
        return False
    m = np.max(x, axis=axis, keepdims=True)
    np.subtract(x, np.where(np.isfinite(m), m, 0), out=out)
    np.exp(out, out=out)
    np.true_divide(out, np.sum(out, axis=axis, keepdims=True), out=out)
    return True


def _rms_norm(out, x, weight=None, eps=1e-6, add_unit_offset=False):
    if not _wide(x, weight):
        return False
    denom = np.sqrt(np.square(x).mean(-1, keepdims=True) + np.asarray(eps, x.dtype))
    np.true_divide(x, denom, out=out)
    if weight is not None:
        np.multiply(out, 1 + weight if add_unit_offset else weight, out=out)
    return True


def _reshape(out, x, shape):
    np.copyto(out.reshape(x.shape), x)
    return True


def _concat(out, xs, axis=0):
    np.concatenate(xs, axis=axis, out=out)
    return True


def _embedding(out, ids, weight):
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        return False  # the reference kernel raises the error that names the bad id
    np.take(weight, ids, axis=0, out=out)
    return True


OUT_KERNELS = {name: _binary(f) for name, f in _UFUNC2.items()}
OUT_KERNELS.update({name: _unary(f) for name, f in _UFUNC1.items()})
OUT_KERNELS.update({"rsqrt": _rsqrt, "relu": _relu, "matmul": _matmul, "linear": _linear,
                    "fused_linear": _fused_linear, "softmax": _softmax, "rms_norm": _rms_norm,
                    "reshape": _reshape, "concat": _concat, "embedding": _embedding})
