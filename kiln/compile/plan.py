"""The Plan (LIR): ordered kernel launches over arena slots, which a backend executes.

`build_plan` schedules a graph (its node order is already topological), hoists steps
that depend only on parameters and constants into `load_steps` (run once when weights
are bound, e.g. a concatenated Q/K/V weight), marks data-movement ops that can be views
(`kind="view"`), moves narrowing casts of inputs and states to the front (a training step's
bfloat16 weight copies: one launch), groups steps into kernels (the launches every backend makes), plans
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
# Ops whose kernels on every backend read that output in any layout, so it may be stored permuted
# for the transpose after it (a training step's attention output, read again by its backward).
STRIDED_READERS = ("attention_backward",)


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
    readers: dict[int, list[str]] = {}   # value -> the ops that read it
    for n in graph.nodes:
        for x in n.flat_inputs():
            readers.setdefault(x.id, []).append(n.op)
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
            others = list(readers[x])
            others.remove(n.op)
            if n.op == "transpose" and producer_op.get(x) in PERMUTED_WRITERS and all(r in STRIDED_READERS for r in others) \
                    and x not in graph_outputs and types[x].rank == len(n.attrs["perm"]):
                layouts[x] = [p % types[x].rank for p in n.attrs["perm"]]
                strides[step.outputs[0]] = contiguous_strides(types[step.outputs[0]].shape)
        else:
            strides.update((o, contiguous_strides(types[o].shape)) for o in step.outputs)
        prec = step_precision(n.op, [types[v].dtype.name for v in flat], [o.type.dtype.name for o in n.outputs])
        step.compute_dtype, step.accumulate_dtype = prec.compute_dtype, prec.accumulate_dtype
        steps.append(step)
    steps = _ropes_side_by_side(_adds_after_norm_backwards(_narrowing_casts_first(steps, types)))
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
                        and o not in memory.slices
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


def _narrowing_casts_first(steps: list[Step], types: dict) -> list[Step]:
    """Casts to a narrower dtype of run inputs and states, moved to the front in their order: a
    training step's bfloat16 copies of its float32 master weights, made layer by layer where the
    graph uses them, become one run that `group_kernels` launches as one multi-tensor kernel
    (60 launches fewer for a 30-layer Llama). The copies live until the backward reads them
    either way, so the peak does not grow; other state-only steps (an optimizer's moment decay)
    stay where they are, since their float32 results are read only at the end."""
    computed = {o for s in steps for o in s.outputs}
    front, rest = [], []
    for s in steps:
        x = s.inputs[0] if s.op == "cast" else None
        if x is not None and x not in computed and types[s.outputs[0]].dtype.itemsize < types[x].dtype.itemsize:
            front.append(s)
        else:
            rest.append(s)
    return front + rest


def _adds_after_norm_backwards(steps: list[Step]) -> list[Step]:
    """Each add of an rms_norm_backward's dx (its only reader) to a gradient computed before the
    norm backward, moved to just after it: nothing then runs between them (the dweight's reader
    came first), so `group_kernels` can make the add the norm backward's epilogue."""
    position = {o: i for i, s in enumerate(steps) for o in s.outputs}
    readers: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            readers.setdefault(v, []).append(i)
    after: dict[int, int] = {}   # add step -> the norm backward step it follows
    for j, s in enumerate(steps):
        if s.op != "rms_norm_backward" or len(readers.get(s.outputs[0], [])) != 1:
            continue
        i = readers[s.outputs[0]][0]
        add = steps[i]
        if add.op == "add" and len(add.inputs) == 2 and add.inputs[0] != add.inputs[1] and i > j + 1:
            other = add.inputs[1] if add.inputs[0] == s.outputs[0] else add.inputs[0]
            if position.get(other, -1) < j:
                after[i] = j
    return _moved_after(steps, {j: [i] for i, j in after.items()})


def _ropes_side_by_side(steps: list[Step]) -> list[Step]:
    """Each rope moved up to just after the previous rope by the same tables (with the views its
    input needs), when its input exists before that one: a backward's rope(dk) and rope(dq) had
    a copy between them, and `group_kernels` launches two adjacent ropes as one."""
    position = {o: i for i, s in enumerate(steps) for o in s.outputs}

    def views_after(v: int, a: int) -> list[int] | None:
        """The view steps after step a that make v, oldest first; None if a computed one is."""
        p = position.get(v, -1)
        if p < a:
            return []
        if steps[p].kind != "view":
            return None
        before = views_after(next(flat_ids(steps[p].inputs)), a)
        return None if before is None else before + [p]

    moves: dict[int, list[int]] = {}   # rope step -> the steps placed right after it
    last_rope: dict[tuple, int] = {}   # (tables, attrs) -> the last rope by them
    moved: set[int] = set()
    for b, s in enumerate(steps):
        if s.op != "rope" or s.kind != "compute":
            continue
        key = (tuple(s.inputs[1:]), repr(sorted(s.attrs.items())))
        a = last_rope.get(key)
        last_rope[key] = b
        if a is None or a in moved or b == a + 1:
            continue
        chain = views_after(s.inputs[0], a)
        if chain is None:
            continue
        moves[a] = chain + [b]
        moved.update(moves[a])
        last_rope.pop(key)   # paired: the next rope starts a new pair
    return _moved_after(steps, moves)


def _moved_after(steps: list[Step], moves: dict[int, list[int]]) -> list[Step]:
    """The steps with those of each `moves[k]` taken from where they were to just after step k."""
    if not moves:
        return steps
    moved = {m for ms in moves.values() for m in ms}
    out = []
    for k, s in enumerate(steps):
        if k in moved:
            continue
        out.append(s)
        out.extend(steps[m] for m in moves.get(k, ()))
    return out


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
