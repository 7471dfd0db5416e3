"""Derivatives of the backward-pass ops of kiln.ir.ops.grad (needed for higher orders).

The scatter-adds are linear in src and transpose back into their gathers; attention_lse and
attention_backward are handled in `attention.py`; softmax_cross_entropy_backward and
rms_norm_backward go through their decompositions into primitives (second order only: the former
materializes the probabilities).
"""

from __future__ import annotations

from ..registry import decomposition, jvp_rule, vjp_rule
from ._util import downcast, graph_of, upcast
from .norm import rms_norm_backward_terms
from .reduction import cross_entropy_valid


@vjp_rule("index_add")
def _index_add_vjp(node, cts, needs):
    return [None, graph_of(node).gather(cts[0], node.inputs[0], axis=node.attrs["axis"])]


@vjp_rule("scatter_add")
def _scatter_add_vjp(node, cts, needs):
    return [None, graph_of(node).take_along_axis(cts[0], node.inputs[0], axis=node.attrs["axis"])]


@jvp_rule("index_add", "scatter_add")
def _scatter_jvp(node, tangents):
    t = tangents[1]
    return [graph_of(node).op(node.op, node.inputs[0], t, **node.attrs) if t is not None else None]


@decomposition("softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_decomposed(g, inputs, attrs):
    logits, labels, lse, dloss, dlse = inputs
    e = attrs["label_smoothing"]
    x = upcast(g, logits)
    classes = x.shape[-1]
    valid, safe = cross_entropy_valid(g, labels, attrs["ignore_index"])
    d = g.where(valid, dloss, g.scalar(0, dloss.dtype))
    row = d if dlse is None else d + dlse

    def col(v):
        return g.reshape(v, shape=list(v.shape) + [1])
    p = g.exp(x - col(lse))
    target = g.one_hot(safe, num_classes=classes, dtype=x.dtype.name)
    if e:
        target = target * (1.0 - e) + e / classes
    return [downcast(g, p * col(row) - target * col(d), logits.dtype)]


@decomposition("rms_norm_backward")
def _rms_norm_backward_decomposed(g, inputs, attrs):
    x, w, dy = inputs
    return rms_norm_backward_terms(g, x, w, dy, attrs["eps"], attrs["add_unit_offset"], attrs["weight_grad"])
