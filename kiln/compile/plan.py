"""The Plan (LIR): ordered kernel launches over arena slots, which a backend executes.

`build_plan` schedules a graph (its node order is already topological), hoists steps
that depend only on parameters and constants into `load_steps` (run once when weights
are bound, e.g. a concatenated Q/K/V weight), marks data-movement ops that can be views
(`kind="view"`), groups steps into kernels (the launches every backend makes), plans
memory over those kernels' lifetimes (states updated in place where they can be) and
annotates each step with the precision policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.ir import SOURCE_OPS, Graph, TensorType

from .kernels import Kernel, group_kernels
from .memory import MemoryPlan, plan_memory, sole_cache_writes
from .precision import step_precision
from .step_inputs import flat_ids
from .strides import contiguous_strides, reshape_strides

# Ops whose result can be a view of their input, for every backend (a reshape where the strides allow).
VIEW_OPS = ("reshape", "transpose", "slice", "split", "broadcast_to")
# Views of anything: these never need contiguous input.

# Ops whose kernels on every backend can store their output permuted, so that the transpose
# after them is a contiguous view (attention -> transpose -> reshape merges heads for free).
PERMUTED_WRITERS = ("attention", "attention_lse")


@dataclass
class Step:
    op: str
    attrs: dict
    inputs: list  # value ids: int | None | list[int]
    outputs: list[int]
    release: list[int] = field(default_factory=list)  # value ids whose last read is this step
    name: str | None = None
    kind: str = "compute"   # "compute": writes its outputs into arena slots; "view": aliases its input
    kernel: int = -1
    compute_dtype: str | None = None
    accumulate_dtype: str | None = None
    inplace: bool = False   # its output overwrites an input that dies here


@dataclass
class Plan:
    graph: Graph
    steps: list[Step]
    inputs: dict[str, tuple[int, TensorType]]     # run inputs (states excluded)
    params: dict[str, tuple[int, TensorType]]
    constants: dict[int, np.ndarray]
    outputs: dict[str, int]                       # run outputs (state updates excluded)
    load_steps: list[Step] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    memory: MemoryPlan | None = None
    types: dict[int, TensorType] = field(default_factory=dict)
    states: dict[str, tuple[int, int, TensorType]] = field(default_factory=dict)  # name -> (read, assigned, type)
    layouts: dict[int, list[int]] = field(default_factory=dict)  # value -> perm: stored as transpose(perm) wants


def build_plan(graph: Graph, reuse_memory: bool = True) -> Plan:
    graph.verify()
    inputs, params, constants = {}, {}, {}
    types: dict[int, TensorType] = {}
    static: set[int] = set()       # values known once parameters are bound
    strides: dict[int, tuple | None] = {}   # element strides of each value (None: unknown, e.g. a reversed slice)
    steps, load_steps = [], []
    readers: dict[int, int] = {}
    for n in graph.nodes:
        for x in n.flat_inputs():
            readers[x.id] = readers.get(x.id, 0) + 1
    graph_outputs = {v.id for v in graph.outputs.values()}
    layouts: dict[int, list[int]] = {}
    producer_op: dict[int, str] = {}
    for n in graph.nodes:
        for o in n.outputs:
            types[o.id] = o.type
        if n.op in SOURCE_OPS:
            v = n.outputs[0]
            strides[v.id] = contiguous_strides(v.shape)
            if n.op == "input":
                inputs[n.name] = (v.id, v.type)
            else:
                static.add(v.id)
                if n.op == "parameter":
                    params[n.name] = (v.id, v.type)
                else:
                    constants[v.id] = n.attrs["value"]
            continue
        ins = [([x.id for x in i] if isinstance(i, list) else (i.id if i is not None else None)) for i in n.inputs]
        step = Step(n.op, n.attrs, ins, [o.id for o in n.outputs], name=n.name)
        flat = list(flat_ids(ins))
        if flat and all(v in static for v in flat):
            static.update(step.outputs)
            load_steps.append(step)
            continue
        for o in n.outputs:
            producer_op[o.id] = n.op
        view = _view_strides(n, types, strides) if n.op in VIEW_OPS else None
        if view is not None:
            step.kind = "view"
            strides.update(zip(step.outputs, view))
            x = flat[0]
            if n.op == "transpose" and producer_op.get(x) in PERMUTED_WRITERS and readers.get(x) == 1 \
                    and x not in graph_outputs and types[x].rank == len(n.attrs["perm"]):
                layouts[x] = [p % types[x].rank for p in n.attrs["perm"]]
                strides[step.outputs[0]] = contiguous_strides(types[step.outputs[0]].shape)
        else:
            strides.update((o, contiguous_strides(types[o].shape)) for o in step.outputs)
        prec = step_precision(n.op, [types[v].dtype.name for v in flat], [o.type.dtype.name for o in n.outputs])
        step.compute_dtype, step.accumulate_dtype = prec.compute_dtype, prec.accumulate_dtype
        steps.append(step)
    states = {name: (vin.id, vout.id, vin.type) for name, (vin, vout) in graph.states.items()}
    for name in states:
        del inputs[name]
    outputs = {k: v.id for k, v in graph.outputs.items() if k not in states}
    keep = set(outputs.values()) | {vout for _, vout, _ in states.values()}
    _assign_releases(steps, keep | static)
    pairs = [(vin, vout) for vin, vout, _ in states.values()]
    kernels = group_kernels(steps, keep, types, sole_cache_writes(steps, pairs), constants)
    memory = plan_memory(steps, types, keep, reuse=reuse_memory, kernels=kernels,
                         states={n: (vin, vout) for n, (vin, vout, _) in states.items()})
    for s in steps:
        s.inplace = any(o in memory.storages and memory.storages[o].inplace_of is not None
                        or memory.value_storage.get(o) in memory.storages and o not in memory.storages
                        for o in s.outputs)
    return Plan(graph, steps, inputs, params, constants, outputs, load_steps, kernels, memory, types, states,
                layouts)


def _view_strides(n, types, strides) -> list | None:
    """The strides of each output of view op node n, or None when it needs a copy (a reshape the
    input's strides do not allow)."""
    x = n.inputs[0]
    st, shape, a = strides.get(x.id), x.shape, n.attrs
    if n.op == "reshape":
        new = reshape_strides(shape, st, n.outputs[0].shape) if st is not None else None
        return None if new is None else [new]
    if st is None:
        return [None] * len(n.outputs)   # views of anything; their own strides are unknown
    if n.op == "transpose":
        return [tuple(st[p % len(shape)] for p in a["perm"])]
    if n.op == "broadcast_to":
        out = tuple(a["shape"])
        lead = len(out) - len(shape)
        return [tuple(0 if i < lead or shape[i - lead] == 1 and out[i] != 1 else st[i - lead]
                      for i in range(len(out)))]
    if n.op == "slice":
        steps = a["steps"] or [1] * len(a["axes"])
        if any(k < 0 for k in steps):
            return [None]
        new = list(st)
        for ax, k in zip(a["axes"], steps):
            new[ax % len(shape)] *= k
        return [tuple(new)]
    return [st] * len(n.outputs)   # split: the same strides, other offsets


def _assign_releases(steps: list[Step], keep: set[int]) -> None:
    last: dict[int, int] = {}
    for i, s in enumerate(steps):
        for x in flat_ids(s.inputs):
            last[x] = i
        for o in s.outputs:
            last.setdefault(o, i)
    for vid, i in last.items():
        if vid not in keep:
            steps[i].release.append(vid)
