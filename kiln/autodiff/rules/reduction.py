"""Derivatives of reductions and of softmax / log_softmax along one axis."""

from __future__ import annotations

from ..registry import jvp_rule, vjp_rule
from ._util import downcast, graph_of, reduced_count, unreduce, upcast


@vjp_rule("sum", "mean")
def _sum_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    axes, keep = node.attrs["axes"], node.attrs["keepdims"]
    ct = unreduce(g, cts[0], x.shape, axes, keep)
    if node.op == "mean":
        ct = ct * (1.0 / reduced_count(x.shape, axes))
    return [ct]


@jvp_rule("sum", "mean")
def _sum_jvp(node, tangents):
    g = graph_of(node)
    return [g.op(node.op, tangents[0], **node.attrs)]


def _argmax_share(node):
    """[x == reduced] / count: how max/min spread a cotangent over tied maxima (torch's amax rule)."""
    g = graph_of(node)
    x, y = node.inputs[0], node.outputs[0]
    axes, keep = node.attrs["axes"], node.attrs["keepdims"]
    hit = g.cast(g.equal(x, unreduce(g, y, x.shape, axes, keep)), dtype=x.dtype.name)
    count = g.sum(hit, axes=axes, keepdims=True)
    return hit / count


@vjp_rule("max", "min")
def _max_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    share = _argmax_share(node)
    return [unreduce(g, cts[0], x.shape, node.attrs["axes"], node.attrs["keepdims"]) * share]


@jvp_rule("max", "min")
def _max_jvp(node, tangents):
    g = graph_of(node)
    return [g.sum(tangents[0] * _argmax_share(node), axes=node.attrs["axes"], keepdims=node.attrs["keepdims"])]


@vjp_rule("softmax")
def _softmax_vjp(node, cts, needs):
    g = graph_of(node)
    axis = node.attrs["axis"]
    y, ct = upcast(g, node.outputs[0]), upcast(g, cts[0])
    dx = y * (ct - g.sum(ct * y, axes=axis, keepdims=True))
    return [downcast(g, dx, node.outputs[0].dtype)]


@jvp_rule("softmax")
def _softmax_jvp(node, tangents):
    # the Jacobian diag(y) - y y^T is symmetric, so the JVP has the VJP's formula
    g = graph_of(node)
    axis = node.attrs["axis"]
    y, t = upcast(g, node.outputs[0]), upcast(g, tangents[0])
    return [downcast(g, y * (t - g.sum(t * y, axes=axis, keepdims=True)), node.outputs[0].dtype)]


@vjp_rule("log_softmax")
def _log_softmax_vjp(node, cts, needs):
    g = graph_of(node)
    axis = node.attrs["axis"]
    y, ct = upcast(g, node.outputs[0]), upcast(g, cts[0])
    dx = ct - g.exp(y) * g.sum(ct, axes=axis, keepdims=True)
    return [downcast(g, dx, node.outputs[0].dtype)]


@jvp_rule("log_softmax")
def _log_softmax_jvp(node, tangents):
    g = graph_of(node)
    axis = node.attrs["axis"]
    y, t = upcast(g, node.outputs[0]), upcast(g, tangents[0])
    return [downcast(g, t - g.sum(t * g.exp(y), axes=axis, keepdims=True), node.outputs[0].dtype)]
