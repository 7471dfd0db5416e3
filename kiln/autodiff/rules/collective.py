"""Derivatives of the collectives: linear maps whose adjoints are collectives too.

Under the objective "sum over ranks of each rank's value", all_reduce is self-adjoint and
all_gather / reduce_scatter are each other's adjoint (the mean variants scale by 1/world).
"""

from __future__ import annotations

from ..registry import jvp_rule, vjp_rule
from ._util import graph_of


@jvp_rule("all_reduce", "all_gather", "reduce_scatter")
def _collective_jvp(node, tangents):
    t = tangents[0]
    return [None if t is None else graph_of(node).op(node.op, t, **node.attrs)]


@vjp_rule("all_reduce")
def _all_reduce_vjp(node, cts, needs):
    return [graph_of(node).all_reduce(cts[0], **node.attrs)]


@vjp_rule("all_gather")
def _all_gather_vjp(node, cts, needs):
    a = node.attrs
    return [graph_of(node).reduce_scatter(cts[0], world=a["world"], axis=a["axis"], reduce="sum")]


@vjp_rule("reduce_scatter")
def _reduce_scatter_vjp(node, cts, needs):
    a = node.attrs
    g = graph_of(node)
    ct = cts[0]
    if a["reduce"] == "mean":
        ct = g.mul(ct, g.scalar(1.0 / a["world"], ct.dtype.name))
    return [g.all_gather(ct, world=a["world"], axis=a["axis"])]
