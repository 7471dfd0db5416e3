"""The Plan: an ordered list of kernel launches that a backend executes.

This first version launches one kernel per graph node and frees each value after
its last use; the compile pipeline (grouping + arena planning) refines it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.ir import SOURCE_OPS, Graph, TensorType


@dataclass
class Step:
    op: str
    attrs: dict
    inputs: list  # value ids: int | None | list[int]
    outputs: list[int]
    release: list[int] = field(default_factory=list)  # value ids whose last use is this step
    name: str | None = None


@dataclass
class Plan:
    graph: Graph
    steps: list[Step]
    inputs: dict[str, tuple[int, TensorType]]
    params: dict[str, tuple[int, TensorType]]
    constants: dict[int, np.ndarray]
    outputs: dict[str, int]


def build_plan(graph: Graph) -> Plan:
    graph.verify()
    inputs, params, constants, steps = {}, {}, {}, []
    for n in graph.nodes:
        v = n.outputs[0] if n.outputs else None
        if n.op == "input":
            inputs[n.name] = (v.id, v.type)
        elif n.op == "parameter":
            params[n.name] = (v.id, v.type)
        elif n.op == "constant":
            constants[v.id] = n.attrs["value"]
        else:
            ins = [([x.id for x in i] if isinstance(i, list) else (i.id if i is not None else None))
                   for i in n.inputs]
            steps.append(Step(n.op, n.attrs, ins, [o.id for o in n.outputs], name=n.name))
    _assign_releases(steps, set(graph.outputs[k].id for k in graph.outputs)
                     | set(constants) | {i for i, _ in params.values()})
    return Plan(graph, steps, inputs, params, constants, {k: v.id for k, v in graph.outputs.items()})


def _assign_releases(steps: list[Step], keep: set[int]) -> None:
    last: dict[int, int] = {}
    for i, s in enumerate(steps):
        for x in _flat(s.inputs):
            last[x] = i
        for o in s.outputs:
            last.setdefault(o, i)
    for vid, i in last.items():
        if vid not in keep:
            steps[i].release.append(vid)


def _flat(inputs):
    for x in inputs:
        if isinstance(x, list):
            yield from x
        elif x is not None:
            yield x
