"""Shared machinery of graph transforms: copying nodes into a new graph, and resolving names."""

from __future__ import annotations

from typing import Iterable

from kiln.ir import SOURCE_OPS, Graph, GraphError, Node, Value, get_op


def map_inputs(node: Node, env: dict[int, Value]) -> list:
    """node.inputs with every value replaced by env[value.id] (lists and None kept)."""
    def one(v):
        return None if v is None else env[v.id]
    return [[one(v) for v in x] if isinstance(x, list) else one(x) for x in node.inputs]


def emit(dst: Graph, op: str, inputs: list, attrs: dict, name: str | None = None) -> list[Value]:
    """Add an op to dst; always returns the list of its outputs."""
    out = dst.op(op, *inputs, name=name, **attrs)
    return list(out) if isinstance(out, tuple) else [out]


def copy_source(dst: Graph, node: Node) -> Value:
    if node.op == "constant":
        return dst.constant(node.attrs["value"], name=node.name)
    t = node.outputs[0].type
    return dst.input(node.name, t.shape, t.dtype) if node.op == "input" else dst.parameter(node.name, t.shape, t.dtype)


def copy_node(dst: Graph, node: Node, env: dict[int, Value]) -> list[Value]:
    """Copy one node of another graph into dst (inputs looked up in env); record and return its outputs."""
    if node.op in SOURCE_OPS:
        outs = [copy_source(dst, node)]
    else:
        outs = emit(dst, node.op, map_inputs(node, env), node.attrs, node.name)
    for old, new in zip(node.outputs, outs):
        env[old.id] = new
    return outs


def source_values(graph: Graph, names: Iterable[str] | None, what: str, float_only: bool = True) -> dict[str, Value]:
    """Look up input/parameter names; None means every float parameter. Errors name what is wrong."""
    sources = {**graph.inputs, **graph.parameters}
    if names is None:
        picked = {k: v for k, v in graph.parameters.items() if v.dtype.is_float}
        if not picked:
            raise GraphError(f"{what}: the graph has no float parameters; name the inputs to use")
        return picked
    if isinstance(names, str):
        names = [names]
    out = {}
    for n in names:
        if n not in sources:
            raise GraphError(f"{what}: {n!r} is not an input or parameter of the graph; "
                             f"expected one of {sorted(sources)}")
        v = sources[n]
        if float_only and not v.dtype.is_float:
            raise GraphError(f"{what}: {n!r} is {v.type}; only float inputs and parameters can be differentiated")
        out[n] = v
    return out


def output_values(graph: Graph, names: Iterable[str] | str, what: str) -> dict[str, Value]:
    if isinstance(names, str):
        names = [names]
    out = {}
    for n in names:
        if n not in graph.outputs:
            raise GraphError(f"{what}: {n!r} is not an output of the graph; expected one of {sorted(graph.outputs)}")
        out[n] = graph.outputs[n]
    return out


def is_differentiable(node: Node) -> bool:
    return node.op not in SOURCE_OPS and get_op(node.op).differentiable


def flat_with_flags(node: Node, flags: list) -> list[tuple[Value, object]]:
    """Pair node's flat inputs with entries of a list shaped like node.inputs."""
    pairs = []
    for x, f in zip(node.inputs, flags):
        if isinstance(x, list):
            pairs.extend(zip(x, f if f is not None else [None] * len(x)))
        elif x is not None:
            pairs.append((x, f))
    return pairs
