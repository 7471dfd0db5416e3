"""Pointwise kernels. Half-precision math runs in float32 and rounds once."""

from __future__ import annotations

import functools

import numpy as np

from kiln.ir.dtypes import as_dtype

from ._registry import is_half, kernel, up


@functools.cache
def scipy_erf():
    """scipy's erf ufunc, imported on first use (importing scipy.special costs ~0.3 s at startup)."""
    from scipy.special import erf as _erf
    return _erf


def erf(x: np.ndarray) -> np.ndarray:
    return scipy_erf()(x).astype(x.dtype, copy=False)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi).astype(x.dtype) * (x + 0.044715 * x * x * x)))
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0).astype(x.dtype)))


def sigmoid_into(x, out):
    """1 / (1 + exp(-x)) into out (which may be x), in four vectorized passes.

    exp(-x) overflows to inf only where the logistic is below the smallest normal float,
    and 1 / inf gives its limit, 0.
    """
    np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    np.add(out, 1, out=out)
    np.true_divide(1, out, out=out)
    return out


def sigmoid(x):
    return sigmoid_into(x, np.empty_like(x))


_UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "sigmoid": sigmoid,
    "silu": lambda x: x * sigmoid(x), "erf": erf, "neg": np.negative, "abs": np.abs,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
}

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
}


def _in_float32(fn, *arrays):
    """Run fn on float32 copies of half inputs; round the result back to the input dtype."""
    dt = arrays[0].dtype
    if is_half(arrays[0]):
        res = fn(*[up(a) for a in arrays])
        return res.astype(dt) if res.dtype.kind == "f" else res
    return fn(*arrays)


def _make_unary(fn):
    return lambda x: _in_float32(fn, x)


def _make_binary(fn):
    return lambda a, b: np.asarray(_in_float32(fn, a, b))


for _name, _fn in _UNARY.items():
    kernel(_name)(_make_unary(_fn))
for _name, _fn in _BINARY.items():
    kernel(_name)(_make_binary(_fn))


@kernel("gelu")
def _gelu(x, approximate="none"):
    return _in_float32(lambda a: gelu(a, approximate), x)


@kernel("logical_not")
def _logical_not(x):
    return np.logical_not(x)


@kernel("where")
def _where(cond, a, b):
    return np.where(cond, a, b)


@kernel("cast")
def _cast(x, dtype):
    return x.astype(as_dtype(dtype).np_dtype)


@kernel("clamp")
def _clamp(x, min=None, max=None):
    def f(a):
        if min is not None:
            a = np.maximum(a, np.asarray(min, a.dtype))
        if max is not None:
            a = np.minimum(a, np.asarray(max, a.dtype))
        return a
    return _in_float32(f, x)


@kernel("swiglu")
def _swiglu(gate, up_):
    return _in_float32(lambda g, u: g * sigmoid(g) * u, gate, up_)


@kernel("geglu")
def _geglu(gate, up_, approximate="none"):
    return _in_float32(lambda g, u: gelu(g, approximate) * u, gate, up_)
