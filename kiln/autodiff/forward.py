"""Forward mode: `jvp` adds tangent inputs and tangent outputs to a graph; `hvp` is
forward-over-reverse (the JVP of the gradient graph)."""

from __future__ import annotations

from typing import Iterable

from kiln.ir import SOURCE_OPS, Graph, GraphError, Node, Value

from .registry import DECOMPOSITIONS, JVP_RULES, ensure_loaded
from .reverse import grad, grad_name
from .rules._util import zeros
from .transform import copy_node, flat_with_flags, is_differentiable, output_values, source_values

TANGENT_PREFIX = "tangent/"
HVP_PREFIX = "hvp/"


def tangent_name(name: str) -> str:
    """The name of the tangent input of source `name` and of the tangent output of output `name`."""
    return TANGENT_PREFIX + name


def hvp_name(name: str) -> str:
    return HVP_PREFIX + name


def jvp(graph: Graph, wrt: Iterable[str] | str | None = None, outputs: Iterable[str] | str | None = None, *,
        keep_outputs: bool = True) -> Graph:
    """A graph computing graph's outputs and their directional derivatives.

    Every source named in `wrt` (default: all float parameters) gets a tangent input
    "tangent/<name>" of its type; every output named in `outputs` (default: all float
    outputs) gets a tangent output "tangent/<name>" = d out . tangents.
    """
    ensure_loaded()
    wrt_v = source_values(graph, wrt, "jvp")
    if outputs is None:
        outs = {k: v for k, v in graph.outputs.items() if v.dtype.is_float}
    else:
        outs = output_values(graph, outputs, "jvp")
    wrt_ids = {v.id: n for n, v in wrt_v.items()}

    dst = Graph(f"{graph.name}_jvp")
    env: dict[int, Value] = {}
    tan: dict[int, Value] = {}
    for node in graph.nodes:
        new = copy_node(dst, node, env)
        if node.op in SOURCE_OPS:
            if node.outputs[0].id in wrt_ids:
                v = new[0]
                tan[v.id] = dst.input(tangent_name(node.name), v.shape, v.dtype)
            continue
        node_jvp(new[0].node, tan)
    if keep_outputs:
        for name, v in graph.outputs.items():
            dst.output(name, env[v.id])
    for name, v in outs.items():
        nv = env[v.id]
        t = tan.get(nv.id)
        dst.output(tangent_name(name), t if t is not None else zeros(dst, nv.shape, nv.dtype))
    return dst


def node_jvp(node: Node, tan: dict[int, Value]) -> None:
    """Compute the tangents of node's outputs from those of its inputs (in `tan`), in place."""
    if not is_differentiable(node):
        return
    in_t = [[tan.get(v.id) for v in x] if isinstance(x, list) else (tan.get(x.id) if x is not None else None)
            for x in node.inputs]
    if all(t is None for _, t in flat_with_flags(node, in_t)):
        return
    rule = JVP_RULES.get(node.op)
    if rule is not None:
        out_t = rule(node, in_t)
    elif node.op in DECOMPOSITIONS:
        out_t = _jvp_through_decomposition(node, tan)
    else:
        raise GraphError(f"jvp: no JVP rule or decomposition for op {node.op!r} ({node.describe()})")
    if len(out_t) != len(node.outputs):
        raise GraphError(f"JVP rule of op {node.op!r} returned {len(out_t)} tangents for {len(node.outputs)} outputs")
    for o, t in zip(node.outputs, out_t):
        if t is None or not o.dtype.is_float:
            continue
        if t.type != o.type:
            raise GraphError(f"JVP rule of op {node.op!r} gave a tangent {t.type} for an output of type {o.type}")
        tan[o.id] = t


def _jvp_through_decomposition(node: Node, tan: dict[int, Value]) -> list:
    """Re-express the op in primitives (recomputing its primal there) and push tangents through them."""
    g = node.outputs[0].graph
    start = len(g.nodes)
    outs = DECOMPOSITIONS[node.op](g, list(node.inputs), node.attrs)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    for sub in list(g.nodes[start:]):
        if sub.op not in SOURCE_OPS:
            node_jvp(sub, tan)
    return [tan.get(o.id) for o in outs]


def hvp(graph: Graph, wrt: Iterable[str] | str | None = None, loss: str = "loss") -> Graph:
    """Hessian-vector products by forward-over-reverse: the JVP of `grad(graph, wrt, loss)`.

    Inputs gain "tangent/<w>" (the vector v, split by wrt name); outputs are graph's outputs,
    "grad/<w>" and "hvp/<w>" = (H v)_w.
    """
    g = grad(graph, wrt, loss)
    names = list(source_values(graph, wrt, "hvp"))
    h = jvp(g, names, [grad_name(n) for n in names])
    renamed = {tangent_name(grad_name(n)): hvp_name(n) for n in names}
    h.outputs = {renamed.get(k, k): v for k, v in h.outputs.items()}
    h.name = f"{graph.name}_hvp"
    return h
