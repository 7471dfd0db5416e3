"""Derivatives of the backward-pass ops of kiln.ir.ops.grad (needed for higher orders).

The scatter-adds are linear in src and transpose back into their gathers; attention_lse and
attention_backward are handled in `attention.py`.
"""

from __future__ import annotations

from ..registry import jvp_rule, vjp_rule
from ._util import graph_of


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
