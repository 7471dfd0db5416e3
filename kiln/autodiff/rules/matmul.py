"""Derivatives of matmul (with transpose flags and batch broadcasting) and linear."""

from __future__ import annotations

from ..registry import jvp_rule, vjp_rule
from ._util import add_terms, graph_of, unbroadcast


@vjp_rule("matmul")
def _matmul_vjp(node, cts, needs):
    g = graph_of(node)
    a, b = node.inputs
    ta, tb = node.attrs["transpose_a"], node.attrs["transpose_b"]
    ct = cts[0]
    da = db = None
    if needs[0]:
        if not ta:
            da = g.matmul(ct, b, transpose_b=not tb)
        else:
            da = g.matmul(b, ct, transpose_a=tb, transpose_b=True)
        da = unbroadcast(g, da, a.shape)
    if needs[1]:
        if not tb:
            db = g.matmul(a, ct, transpose_a=not ta)
        else:
            db = g.matmul(ct, a, transpose_a=True, transpose_b=ta)
        db = unbroadcast(g, db, b.shape)
    return [da, db]


@jvp_rule("matmul")
def _matmul_jvp(node, tangents):
    g = graph_of(node)
    a, b = node.inputs
    t_a, t_b = tangents
    terms = [g.matmul(t_a, b, **node.attrs) if t_a is not None else None,
             g.matmul(a, t_b, **node.attrs) if t_b is not None else None]
    return [add_terms(g, terms, node.outputs[0].shape)]


@vjp_rule("linear")
def _linear_vjp(node, cts, needs):
    g = graph_of(node)
    x, w, _ = node.inputs
    ct = cts[0]
    ct2 = g.reshape(ct, shape=[-1, ct.shape[-1]]) if ct.ndim != 2 else ct  # [M, out]
    dx = dw = db = None
    if needs[0]:
        dx = g.matmul(ct2, w)
        if ct.ndim != 2:
            dx = g.reshape(dx, shape=list(x.shape))
    if needs[1]:
        x2 = g.reshape(x, shape=[-1, x.shape[-1]]) if x.ndim != 2 else x
        dw = g.matmul(ct2, x2, transpose_a=True)
    if len(needs) > 2 and needs[2]:
        db = g.sum(ct, axes=list(range(ct.ndim - 1))) if ct.ndim > 1 else ct
    return [dx, dw, db]


@jvp_rule("linear")
def _linear_jvp(node, tangents):
    g = graph_of(node)
    x, w, _ = node.inputs
    tx, tw, tb = tangents
    terms = [g.linear(tx, w) if tx is not None else None,
             g.linear(x, tw) if tw is not None else None,
             tb]
    return [add_terms(g, terms, node.outputs[0].shape)]
