"""Pointwise ops with NumPy broadcasting. Mixed dtypes are an error: casts are explicit."""

from __future__ import annotations

from ..dtypes import as_dtype, bool_
from ..errors import GraphError
from ..op_spec import REQUIRED, OpSpec, register_op
from ..shapes import broadcast_shapes
from ._rules import expect_float, expect_same_dtype, tt

UNARY_FLOAT = ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "gelu")
UNARY_ANY = ("neg", "abs", "relu")
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
LOGICAL = ("logical_and", "logical_or")


def _unary(name: str, float_only: bool):
    def infer(types, attrs):
        (x,) = types
        if float_only:
            expect_float(name, "x", x)
        elif x.dtype == bool_:
            raise GraphError(f"op {name!r}: input 'x' must be numeric, got {x}")
        return x
    return infer


def _binary(name: str, result_bool: bool = False, bool_inputs: bool = False):
    def infer(types, attrs):
        a, b = types
        expect_same_dtype(name, {"a": a, "b": b})
        if bool_inputs and a.dtype != bool_:
            raise GraphError(f"op {name!r}: inputs must be bool, got {a} and {b}")
        if name == "pow" or name == "div":
            expect_float(name, "a", a)
        shape = broadcast_shapes(a.shape, b.shape)
        return tt(shape, bool_ if result_bool else a.dtype)
    return infer


for _n in UNARY_FLOAT:
    register_op(OpSpec(_n, "pointwise", ("x",), _unary(_n, True),
                       attrs={"approximate": "none"} if _n == "gelu" else {}))
for _n in UNARY_ANY:
    register_op(OpSpec(_n, "pointwise", ("x",), _unary(_n, False)))
for _n in BINARY:
    register_op(OpSpec(_n, "pointwise", ("a", "b"), _binary(_n)))
for _n in COMPARE:
    register_op(OpSpec(_n, "pointwise", ("a", "b"), _binary(_n, result_bool=True), differentiable=False))
for _n in LOGICAL:
    register_op(OpSpec(_n, "pointwise", ("a", "b"), _binary(_n, True, True), differentiable=False))


def _logical_not(types, attrs):
    (x,) = types
    if x.dtype != bool_:
        raise GraphError(f"op 'logical_not': input 'x' must be bool, got {x}")
    return x


register_op(OpSpec("logical_not", "pointwise", ("x",), _logical_not, differentiable=False))


def _where(types, attrs):
    c, a, b = types
    if c.dtype != bool_:
        raise GraphError(f"op 'where': input 'cond' must be bool, got {c}")
    expect_same_dtype("where", {"a": a, "b": b})
    return tt(broadcast_shapes(c.shape, a.shape, b.shape), a.dtype)


register_op(OpSpec("where", "pointwise", ("cond", "a", "b"), _where))


def _cast(types, attrs):
    (x,) = types
    return tt(x.shape, as_dtype(attrs["dtype"]))


register_op(OpSpec("cast", "pointwise", ("x",), _cast, attrs={"dtype": REQUIRED}))


def _clamp(types, attrs):
    (x,) = types
    if x.dtype == bool_:
        raise GraphError(f"op 'clamp': input 'x' must be numeric, got {x}")
    if attrs["min"] is None and attrs["max"] is None:
        raise GraphError("op 'clamp': give at least one of 'min' and 'max'")
    if not x.dtype.is_float:
        for k in ("min", "max"):
            if attrs[k] is not None and attrs[k] != int(attrs[k]):
                raise GraphError(f"op 'clamp': {k}={attrs[k]!r} is not an integer, but input 'x' is {x}; "
                                 f"clamping would truncate it (cast x to a float type first)")
    return x


register_op(OpSpec("clamp", "pointwise", ("x",), _clamp, attrs={"min": None, "max": None}))




def _gated(name):
    def infer(types, attrs):
        g, u = types
        expect_float(name, "gate", g)
        expect_same_dtype(name, {"gate": g, "up": u})
        return tt(broadcast_shapes(g.shape, u.shape), g.dtype)
    return infer


register_op(OpSpec("swiglu", "pointwise", ("gate", "up"), _gated("swiglu"),
                   doc="silu(gate) * up, the Llama MLP's gated activation"))
register_op(OpSpec("geglu", "pointwise", ("gate", "up"), _gated("geglu"), attrs={"approximate": "none"},
                   doc="gelu(gate) * up"))
