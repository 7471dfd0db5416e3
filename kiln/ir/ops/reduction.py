"""Reductions over axes (sum, mean, max, min, argmax) and row-wise softmax / log_softmax."""

from __future__ import annotations

from ..dtypes import bool_, int64
from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ..shapes import norm_axes, norm_axis, reduced_shape
from ._rules import expect_float, tt


def _reduce(name):
    def infer(types, attrs):
        (x,) = types
        if x.dtype == bool_:
            raise GraphError(f"op {name!r}: input 'x' must be numeric, got {x}")
        if name == "mean":
            expect_float(name, "x", x)
        axes = norm_axes(attrs["axes"], x.rank)
        if name in ("max", "min") and any(x.shape[a] == 0 for a in axes):
            raise GraphError(f"op {name!r}: cannot reduce an empty axis of {x}")
        return tt(reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype)
    return infer


for _n in ("sum", "mean", "max", "min"):
    register_op(OpSpec(_n, "reduction", ("x",), _reduce(_n), attrs={"axes": None, "keepdims": False}))


def _argmax(types, attrs):
    (x,) = types
    a = norm_axis(attrs["axis"], x.rank)
    return tt(reduced_shape(x.shape, [a], attrs["keepdims"]), int64)


register_op(OpSpec("argmax", "reduction", ("x",), _argmax, attrs={"axis": -1, "keepdims": False},
                   differentiable=False))


def _softmax(name):
    def infer(types, attrs):
        (x,) = types
        expect_float(name, "x", x)
        norm_axis(attrs["axis"], x.rank)
        return x
    return infer


register_op(OpSpec("softmax", "reduction", ("x",), _softmax("softmax"), attrs={"axis": -1}))
register_op(OpSpec("log_softmax", "reduction", ("x",), _softmax("log_softmax"), attrs={"axis": -1}))
