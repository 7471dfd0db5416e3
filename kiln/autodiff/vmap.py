"""`vmap`: the graph transform that adds a leading batch axis to chosen inputs.

Each value is either batched (a new leading axis of size B) or not; an op with no batched
input is copied unchanged, otherwise its batching rule (kiln.autodiff.batching) rewrites it
on batched values. Ops without a rule are unrolled: the op runs once per batch element and
the results are concatenated, which is always correct, only slower.
"""

from __future__ import annotations

from typing import Iterable

from kiln.ir import SOURCE_OPS, Graph, GraphError, Node, Value, get_op

from .batching import BATCH_RULES, unrolled
from .batching.elementwise import pointwise_rule
from .transform import copy_node, copy_source, map_inputs, source_values


def vmap(graph: Graph, batched: Iterable[str] | str, batch_size: int) -> Graph:
    """A graph where each source named in `batched` has an extra leading axis of `batch_size`,
    and every output has that leading axis too (outputs independent of them are broadcast)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GraphError(f"vmap: batch_size must be a positive int, got {batch_size!r}")
    names = set(source_values(graph, batched, "vmap", float_only=False))
    b = batch_size
    dst = Graph(f"{graph.name}_vmap")
    env: dict[int, Value] = {}
    is_batched: set[int] = set()
    for node in graph.nodes:
        if node.op in SOURCE_OPS:
            if node.name in names:
                t = node.outputs[0].type
                make = dst.input if node.op == "input" else dst.parameter
                v = make(node.name, (b,) + t.shape, t.dtype)
                env[node.outputs[0].id] = v
                is_batched.add(node.outputs[0].id)
            else:
                env[node.outputs[0].id] = copy_source(dst, node)
            continue
        flags = [[v.id in is_batched for v in x] if isinstance(x, list) else (x is not None and x.id in is_batched)
                 for x in node.inputs]
        if not any(f if isinstance(f, bool) else any(f) for f in flags):
            copy_node(dst, node, env)
            continue
        args = map_inputs(node, env)
        rule = BATCH_RULES.get(node.op)
        if rule is None:
            rule = pointwise_rule if get_op(node.op).category == "pointwise" else unrolled
        outs = rule(dst, node, args, flags, b)
        _check(node, outs, b)
        for old, new in zip(node.outputs, outs):
            env[old.id] = new
            is_batched.add(old.id)
    for name, v in graph.outputs.items():
        new = env[v.id]
        dst.output(name, new if v.id in is_batched else dst.broadcast_to(new, shape=[b] + list(new.shape)))
    return dst


def _check(node: Node, outs, b: int) -> None:
    if len(outs) != len(node.outputs):
        raise GraphError(f"vmap: batching rule of op {node.op!r} gave {len(outs)} outputs, expected {len(node.outputs)}")
    for old, new in zip(node.outputs, outs):
        want = (b,) + old.shape
        if new.shape != want or new.dtype != old.dtype:
            raise GraphError(f"vmap: batching rule of op {node.op!r} gave {new.type}, expected "
                             f"{old.dtype}[{', '.join(map(str, want))}]")
