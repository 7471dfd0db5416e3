"""Classic graph passes beside the e-graph: dead-code elimination, CSE, constant folding.

They run first, in one rebuild of the graph, so the e-graph starts small: constants are
already folded (the rules then see one `Const` instead of an expression), duplicates
are one node, and nothing unused is translated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.ir import Graph, Value

from .attr_key import node_key

# evaluate(op, inputs, attrs) -> array or tuple of arrays: the reference semantics of an op.
Evaluator = Callable[[str, list, dict], object]

FOLD_MAX_ELEMENTS = 1 << 16   # never materialize a folded constant larger than this
DEDUP_MAX_ELEMENTS = 1 << 12  # constants up to this size are compared by value for CSE


@dataclass
class PassStats:
    dead: int = 0
    merged: int = 0
    folded: int = 0


def live_nodes(graph: Graph) -> set[int]:
    """Ids of nodes the outputs depend on, plus every input and parameter (they define the API)."""
    live: set[int] = set()
    stack = [v.node for v in graph.outputs.values()]
    while stack:
        n = stack.pop()
        if n.id in live:
            continue
        live.add(n.id)
        stack.extend(v.node for v in n.flat_inputs())
    live.update(n.id for n in graph.nodes if n.op in ("input", "parameter"))
    return live


def simplify(graph: Graph, evaluate: Evaluator | None = None) -> tuple[Graph, PassStats]:
    """DCE + CSE + constant folding (when an evaluator is given) in one rebuild."""
    stats = PassStats()
    live = live_nodes(graph)
    g = Graph(graph.name)
    vmap: dict[int, Value] = {}
    seen: dict = {}
    const_ids: set[int] = set()

    def mapped(x):
        if x is None:
            return None
        if isinstance(x, list):
            return [vmap[v.id] for v in x]
        return vmap[x.id]

    for node in graph.nodes:
        if node.id not in live:
            stats.dead += 1
            continue
        if node.op in ("input", "parameter"):
            v = node.outputs[0]
            vmap[v.id] = getattr(g, node.op)(node.name, v.shape, v.dtype)
            continue
        if node.op == "constant":
            new = _constant(g, node.attrs["value"], node.name, seen, stats)
            const_ids.add(new.id)
            vmap[node.outputs[0].id] = new
            continue
        ins = [mapped(x) for x in node.inputs]
        flat = [v for x in ins for v in (x if isinstance(x, list) else [x]) if v is not None]
        outs = None
        if evaluate is not None and flat and all(v.id in const_ids for v in flat) and \
                sum(o.type.size for o in node.outputs) <= FOLD_MAX_ELEMENTS:
            outs = _fold(g, node, ins, evaluate, seen, stats)
            if outs is not None:
                const_ids.update(o.id for o in outs)
        if outs is None:
            key = _key(node.op, node.attrs, ins)
            if key is not None and key in seen:
                outs = seen[key]
                stats.merged += 1
            else:
                res = g.op(node.op, *ins, name=node.name, **node.attrs)
                outs = list(res) if isinstance(res, tuple) else [res]
                if key is not None:
                    seen[key] = outs
        for old, new in zip(node.outputs, outs):
            vmap[old.id] = new
    for name, v in graph.outputs.items():
        g.output(name, vmap[v.id])
    return g, stats


def _constant(g: Graph, value: np.ndarray, name, seen: dict, stats: PassStats) -> Value:
    key = None
    if value.size <= DEDUP_MAX_ELEMENTS:
        key = ("constant", value.dtype.str, value.shape, value.tobytes(), name)
        if key in seen:
            stats.merged += 1
            return seen[key]
    v = g.constant(value, name=name)
    if key is not None:
        seen[key] = v
    return v


def _fold(g, node, ins, evaluate, seen, stats):
    def arr(x):
        return [arr(v) for v in x] if isinstance(x, list) else (None if x is None else x.node.attrs["value"])
    try:
        res = evaluate(node.op, [arr(x) for x in ins], dict(node.attrs))
    except Exception:
        return None  # leave it to run time, where the same error names the node
    results = list(res) if isinstance(res, tuple) else [res]
    if len(results) != len(node.outputs):
        return None
    outs = []
    for o, r in zip(node.outputs, results):
        r = np.asarray(r)
        if r.shape != o.type.shape or r.dtype != o.type.dtype.np_dtype:
            return None
        outs.append(_constant(g, np.ascontiguousarray(r), None, seen, stats))
    stats.folded += 1
    return outs


def _key(op: str, attrs: dict, ins: list):
    """Hash key of a node for CSE, or None when its attributes hold arrays."""
    ids = tuple(tuple(v.id for v in x) if isinstance(x, list) else (None if x is None else x.id) for x in ins)
    return node_key(op, attrs, ids)


def prune(graph: Graph) -> int:
    """Drop nodes nothing depends on (in place); returns how many went."""
    live = live_nodes(graph)
    before = len(graph.nodes)
    graph.nodes[:] = [n for n in graph.nodes if n.id in live]
    return before - len(graph.nodes)
