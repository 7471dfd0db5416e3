"""Reverse mode: `grad` and `vjp` turn a graph into one that also computes gradients.

The result is an ordinary Graph (forward nodes, then backward nodes), so it goes through the
same optimizer, memory planner and backends as any other. Cotangents of a value used more
than once are summed (fan-out accumulation). Ops with no VJP rule are differentiated through
their decomposition; attention's forward is swapped for attention_lse so that its backward
can recompute probabilities from the saved log-sum-exp.
"""

from __future__ import annotations

from typing import Iterable

from kiln.ir import SOURCE_OPS, Graph, GraphError, Value

from .registry import DECOMPOSITIONS, GRAD_FORWARDS, VJP_RULES, ensure_loaded
from .rules._util import zeros
from .transform import copy_node, flat_with_flags, is_differentiable, map_inputs, output_values, source_values

GRAD_PREFIX = "grad/"
COTANGENT_PREFIX = "cotangent/"


def grad_name(name: str) -> str:
    """The output name under which `grad` returns d loss / d `name`."""
    return GRAD_PREFIX + name


def cotangent_name(name: str) -> str:
    """The input name under which `vjp` takes the cotangent of output `name`."""
    return COTANGENT_PREFIX + name


def grad(graph: Graph, wrt: Iterable[str] | str | None = None, loss: str = "loss", *,
         keep_outputs: bool = True) -> Graph:
    """A graph computing graph's outputs and d loss / d w for every w in wrt (outputs "grad/<w>").

    `loss` names a scalar float output; `wrt` names inputs or parameters (default: every float
    parameter). A wrt that the loss does not depend on gets a zero gradient.
    """
    ensure_loaded()
    (loss_v,) = output_values(graph, loss, "grad").values()
    if loss_v.shape != () or not loss_v.dtype.is_float:
        raise GraphError(f"grad: loss output {loss!r} must be a float scalar, got {loss_v.type}; "
                         f"use vjp for non-scalar outputs")
    return _reverse(graph, source_values(graph, wrt, "grad"), {loss: None}, keep_outputs, "grad")


def vjp(graph: Graph, wrt: Iterable[str] | str | None, outputs: Iterable[str] | str, *,
        keep_outputs: bool = True) -> Graph:
    """Like grad for non-scalar outputs: adds an input "cotangent/<out>" per output (same type) and
    returns sum over outputs of <cotangent, d out / d w> as "grad/<w>"."""
    ensure_loaded()
    outs = output_values(graph, outputs, "vjp")
    for name, v in outs.items():
        if not v.dtype.is_float:
            raise GraphError(f"vjp: output {name!r} is {v.type}; only float outputs have cotangents")
    return _reverse(graph, source_values(graph, wrt, "vjp"), {n: "input" for n in outs}, keep_outputs, "vjp")


def _reverse(src: Graph, wrt: dict[str, Value], seeds: dict[str, str | None], keep_outputs: bool,
             what: str) -> Graph:
    seed_src = [src.outputs[n] for n in seeds]
    needed = _needs_grad_nodes(src, [v.id for v in wrt.values()], [v.id for v in seed_src])

    dst = Graph(f"{src.name}_{what}")
    env: dict[int, Value] = {}
    for node in src.nodes:
        if node.id in needed and node.op not in VJP_RULES and node.op in GRAD_FORWARDS | DECOMPOSITIONS:
            expand = GRAD_FORWARDS.get(node.op) or DECOMPOSITIONS[node.op]
            outs = expand(dst, map_inputs(node, env), node.attrs)
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            for old, new in zip(node.outputs, outs):
                if old.type != new.type:
                    raise GraphError(f"{what}: the gradient forward of op {node.op!r} gives {new.type}, "
                                     f"expected {old.type}")
                env[old.id] = new
        else:
            copy_node(dst, node, env)
    if keep_outputs:
        for name, v in src.outputs.items():
            dst.output(name, env[v.id])
    forward_nodes = list(dst.nodes)

    cts: dict[int, Value] = {}
    for name, kind in seeds.items():
        v = env[src.outputs[name].id]
        seed = dst.scalar(1.0, v.dtype) if kind is None else dst.input(cotangent_name(name), v.shape, v.dtype)
        _accumulate(dst, cts, v, seed, "seed")

    wrt_new = {n: env[v.id] for n, v in wrt.items()}
    active = _active_values(forward_nodes, {v.id for v in wrt_new.values()})
    for node in reversed(forward_nodes):
        if node.op in SOURCE_OPS or not is_differentiable(node):
            continue
        out_cts = [cts.get(o.id) for o in node.outputs]
        if all(c is None for c in out_cts):
            continue
        needs = [[v.id in active for v in x] if isinstance(x, list) else (x is not None and x.id in active)
                 for x in node.inputs]
        if not any(f for _, f in flat_with_flags(node, needs)):
            continue
        rule = VJP_RULES.get(node.op)
        if rule is None:
            raise GraphError(f"{what}: no VJP rule for op {node.op!r} ({node.describe()})")
        in_cts = rule(node, out_cts, needs)
        if len(in_cts) != len(node.inputs):
            raise GraphError(f"VJP rule of op {node.op!r} returned {len(in_cts)} cotangents for "
                             f"{len(node.inputs)} inputs")
        for v, ct in flat_with_flags(node, in_cts):
            if ct is not None and v.id in active:
                _accumulate(dst, cts, v, ct, node.op)

    for name, v in wrt_new.items():
        if grad_name(name) in dst.outputs:
            raise GraphError(f"{what}: the graph already has an output {grad_name(name)!r}; "
                             f"pass keep_outputs=False (e.g. for a second derivative)")
        g = cts.get(v.id)
        dst.output(grad_name(name), g if g is not None else zeros(dst, v.shape, v.dtype))
    return dst


def _accumulate(g: Graph, cts: dict[int, Value], v: Value, ct: Value, op: str) -> None:
    if ct.type != v.type:
        raise GraphError(f"VJP rule of op {op!r} gave a cotangent {ct.type} for a value of type {v.type}")
    prev = cts.get(v.id)
    cts[v.id] = ct if prev is None else g.add(prev, ct)


def _active_values(nodes, seeds: set[int]) -> set[int]:
    """Values that depend on a seed through differentiable ops and have a float type."""
    active = set(seeds)
    for node in nodes:
        if node.op in SOURCE_OPS or not is_differentiable(node):
            continue
        if any(v.id in active for v in node.flat_inputs()):
            active.update(o.id for o in node.outputs if o.dtype.is_float)
    return active


def _needs_grad_nodes(graph: Graph, wrt_ids: list[int], seed_ids: list[int]) -> set[int]:
    """Ids of nodes on a differentiable path from a wrt value to a seed output."""
    active = _active_values(graph.nodes, set(wrt_ids))
    useful = set(seed_ids)
    needed = set()
    for node in reversed(graph.nodes):
        if any(o.id in useful for o in node.outputs):
            useful.update(v.id for v in node.flat_inputs())
            if node.op not in SOURCE_OPS and any(v.id in active for v in node.flat_inputs()):
                needed.add(node.id)
    return needed
