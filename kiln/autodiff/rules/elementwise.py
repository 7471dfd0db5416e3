"""Derivatives of pointwise ops. Each unary op states t * f'(x) once; VJP and JVP share it."""

from __future__ import annotations

import math

from kiln.ir import Graph, Value

from ..registry import jvp_rule, vjp_rule
from ._util import add_terms, expand, graph_of, unbroadcast

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _zero(g: Graph, like: Value) -> Value:
    return g.scalar(0, like.dtype)


def sign(g: Graph, x: Value) -> Value:
    """-1, 0 or 1 in x's dtype (torch's sgn; abs has gradient 0 at 0)."""
    z = _zero(g, x)
    return g.sub(g.cast(g.greater(x, z), dtype=x.dtype.name), g.cast(g.less(x, z), dtype=x.dtype.name))


def sigmoid_grad(g: Graph, s: Value) -> Value:
    return s * (1.0 - s)


def silu_grad(g: Graph, x: Value) -> Value:
    s = g.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def gelu_grad(g: Graph, x: Value, approximate: str) -> Value:
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * SQRT_2_OVER_PI
        t = g.tanh(inner)
        return (1.0 + t) * 0.5 + x * 0.5 * (1.0 - t * t) * ((1.0 + x * x * (3 * 0.044715)) * SQRT_2_OVER_PI)
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    cdf = (1.0 + g.erf(x * (1.0 / math.sqrt(2.0)))) * 0.5
    pdf = g.exp(x * x * -0.5) * INV_SQRT_2PI
    return cdf + x * pdf


def _unary_linearized(node, t: Value) -> Value:
    """t * f'(x) for the unary op of `node` (x its input, y its output)."""
    g = graph_of(node)
    x, y, op = node.inputs[0], node.outputs[0], node.op
    if op == "exp":
        return t * y
    if op == "log":
        return t / x
    if op == "sqrt":
        return t / y * 0.5
    if op == "rsqrt":
        return t * y / x * -0.5
    if op == "sin":
        return t * g.cos(x)
    if op == "cos":
        return -(t * g.sin(x))
    if op == "tanh":
        return t * (1.0 - y * y)
    if op == "sigmoid":
        return t * sigmoid_grad(g, y)
    if op == "silu":
        return t * silu_grad(g, x)
    if op == "erf":
        return t * g.exp(-(x * x)) * TWO_OVER_SQRT_PI
    if op == "gelu":
        return t * gelu_grad(g, x, node.attrs["approximate"])
    if op == "neg":
        return -t
    if op == "abs":
        return t * sign(g, x)
    if op == "relu":
        return g.where(g.greater(x, _zero(g, x)), t, _zero(g, t))
    if op == "clamp":
        lo, hi = node.attrs["min"], node.attrs["max"]
        keep = None
        if lo is not None:
            keep = g.greater_equal(x, g.scalar(lo, x.dtype))
        if hi is not None:
            le = g.less_equal(x, g.scalar(hi, x.dtype))
            keep = le if keep is None else g.logical_and(keep, le)
        return g.where(keep, t, _zero(g, t))
    raise KeyError(op)


UNARY = ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "gelu",
         "neg", "abs", "relu", "clamp")


@vjp_rule(*UNARY)
def _unary_vjp(node, cts, needs):
    return [_unary_linearized(node, cts[0])]


@jvp_rule(*UNARY)
def _unary_jvp(node, tangents):
    return [_unary_linearized(node, tangents[0])]


@vjp_rule("cast")
def _cast_vjp(node, cts, needs):
    x = node.inputs[0]
    if not x.dtype.is_float:
        return [None]
    return [graph_of(node).cast(cts[0], dtype=x.dtype.name)]


@jvp_rule("cast")
def _cast_jvp(node, tangents):
    y = node.outputs[0]
    if not y.dtype.is_float:
        return [None]
    return [graph_of(node).cast(tangents[0], dtype=y.dtype.name)]


# ---- binary ------------------------------------------------------------------------

def _binary_partials(node):
    """(dy/da, dy/db) as values broadcastable to the output, or None for a partial of 1."""
    g = graph_of(node)
    a, b = node.inputs
    y = node.outputs[0]
    op = node.op
    if op == "add":
        return None, None
    if op == "sub":
        return None, g.scalar(-1, y.dtype)
    if op == "mul":
        return b, a
    if op == "div":
        inv = 1.0 / b
        return inv, -(y * inv)
    if op == "pow":
        zero = _zero(g, y)
        da = g.where(g.equal(b, zero), zero, b * g.pow(a, b - 1.0))
        at_zero = g.logical_and(g.equal(a, zero), g.greater_equal(b, zero))
        db = g.where(at_zero, zero, y * g.log(a))
        return da, db
    if op in ("maximum", "minimum"):
        zero, one, half = _zero(g, y), g.scalar(1, y.dtype), g.scalar(0.5, y.dtype)
        a_wins = g.greater(a, b) if op == "maximum" else g.less(a, b)
        b_wins = g.less(a, b) if op == "maximum" else g.greater(a, b)
        tie = g.equal(a, b)
        da = g.where(tie, half, g.where(a_wins, one, zero))   # ties split evenly, as in torch
        db = g.where(tie, half, g.where(b_wins, one, zero))
        return da, db
    if op in ("swiglu", "geglu"):
        gate, up = a, b
        if op == "swiglu":
            act, dact = g.silu(gate), silu_grad(g, gate)
        else:
            appr = node.attrs["approximate"]
            act, dact = g.gelu(gate, approximate=appr), gelu_grad(g, gate, appr)
        return up * dact, act
    raise KeyError(op)


BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "swiglu", "geglu")


def _times(t: Value, d: Value | None) -> Value:
    return t if d is None else t * d


@vjp_rule(*BINARY)
def _binary_vjp(node, cts, needs):
    g = graph_of(node)
    a, b = node.inputs
    da, db = _binary_partials(node)
    ct = cts[0]
    return [unbroadcast(g, _times(ct, da), a.shape) if needs[0] else None,
            unbroadcast(g, _times(ct, db), b.shape) if needs[1] else None]


@jvp_rule(*BINARY)
def _binary_jvp(node, tangents):
    g = graph_of(node)
    ta, tb = tangents
    da, db = _binary_partials(node)
    terms = [_times(ta, da) if ta is not None else None, _times(tb, db) if tb is not None else None]
    return [add_terms(g, terms, node.outputs[0].shape)]


@vjp_rule("where")
def _where_vjp(node, cts, needs):
    g = graph_of(node)
    cond, a, b = node.inputs
    ct = cts[0]
    zero = _zero(g, ct)
    return [None,
            unbroadcast(g, g.where(cond, ct, zero), a.shape) if needs[1] else None,
            unbroadcast(g, g.where(cond, zero, ct), b.shape) if needs[2] else None]


@jvp_rule("where")
def _where_jvp(node, tangents):
    g = graph_of(node)
    cond = node.inputs[0]
    _, ta, tb = tangents
    y = node.outputs[0]
    if ta is None and tb is None:
        return [None]
    zero = _zero(g, y)
    return [expand(g, g.where(cond, ta if ta is not None else zero, tb if tb is not None else zero), y.shape)]

