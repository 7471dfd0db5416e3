"""Derivatives of reductions, of softmax / log_softmax along one axis, and of the softmax
cross-entropy (its VJP is the fused softmax_cross_entropy_backward op)."""

from __future__ import annotations

from ..registry import jvp_rule, vjp_rule
from ._util import downcast, graph_of, reduced_count, unreduce, upcast, zeros


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


@vjp_rule("softmax_cross_entropy")
def _softmax_cross_entropy_vjp(node, cts, needs):
    if not needs[0] or (cts[0] is None and cts[1] is None):
        return [None, None]
    g = graph_of(node)
    logits, labels = node.inputs
    loss, lse = node.outputs
    dloss = cts[0] if cts[0] is not None else zeros(g, loss.shape, loss.dtype)
    return [g.softmax_cross_entropy_backward(logits, labels, lse, dloss, cts[1], **node.attrs), None]


def cross_entropy_valid(g, labels, ignore_index: int):
    """(valid rows, labels with ignored rows pointing at class 0), as graph values."""
    valid = g.not_equal(labels, g.scalar(ignore_index, labels.dtype))
    return valid, g.where(valid, labels, g.scalar(0, labels.dtype))


@jvp_rule("softmax_cross_entropy")
def _softmax_cross_entropy_jvp(node, tangents):
    t = tangents[0]
    if t is None:
        return [None, None]
    g = graph_of(node)
    logits, labels = node.inputs
    lse = node.outputs[1]
    e = node.attrs["label_smoothing"]
    x, t = upcast(g, logits), upcast(g, t)
    p = g.exp(x - g.reshape(lse, shape=list(lse.shape) + [1]))
    dlse = g.sum(p * t, axes=[-1])
    valid, safe = cross_entropy_valid(g, labels, node.attrs["ignore_index"])
    target = g.reshape(g.take_along_axis(t, g.reshape(safe, shape=list(safe.shape) + [1]), axis=-1),
                       shape=list(labels.shape))
    if e:
        target = target * (1.0 - e) + g.mean(t, axes=[-1]) * e
    return [g.where(valid, dlse - target, g.scalar(0, dlse.dtype)), dlse]
