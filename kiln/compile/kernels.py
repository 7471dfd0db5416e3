"""Kernel grouping: which plan steps one backend launch covers (launch granularity).

This is the one place that decides it, for every backend: the NumPy executor runs a
kernel's steps in order, the Triton backend emits one launch per kernel. Fusions that
change the math (a matmul's norm prologue, activation and residual epilogue, attention)
are the optimizer's fused ops; grouping only decides what runs in one launch:

- pointwise chains: a pointwise step joins the kernel that produced its input when that
  input has no other reader and is not an output, and every other input of the step
  exists when the kernel starts (the launch then runs at the kernel's last step);
- a matmul's cast to float32 (half-precision logits): the launch rounds its result to
  the matmul dtype and stores float32;
- a decode step's q/k/v epilogue: rope(q), rope(k) written into its cache, and v written
  into its cache at the same position, when both caches are states updated in place
  (`decode_qkv_groups`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kiln.ir import get_op

from .step_inputs import flat_ids

ARCHETYPES = ("pointwise", "reduction", "matmul", "attention", "layout")
_BY_CATEGORY = {"pointwise": "pointwise", "reduction": "reduction", "norm": "reduction", "matmul": "matmul",
                "attention": "attention"}
MATMUL_OPS = ("linear", "fused_linear", "matmul")
HALF = ("float16", "bfloat16")


@dataclass
class Kernel:
    archetype: str
    steps: list[int] = field(default_factory=list)
    pattern: str = "single"   # single | pointwise_chain | matmul_cast | rope_qkv_cache

    @property
    def first(self) -> int:
        return self.steps[0]

    @property
    def last(self) -> int:
        return self.steps[-1]


def archetype_of(op: str) -> str:
    try:
        return _BY_CATEGORY.get(get_op(op).category, "layout")
    except KeyError:
        return "layout"


def group_kernels(steps, keep: set[int], types: dict, in_place_states: dict[int, int] | None = None) -> list[Kernel]:
    """Assign `step.kernel` for every compute step (views stay -1) and return the kernels.

    `keep`: values read after the plan (graph outputs, assigned states); `types`: value id ->
    TensorType; `in_place_states`: state value id -> the value assigned to it, for the
    states whose update the memory plan makes in place.
    """
    producer: dict[int, int] = {}  # value id -> step index
    readers: Counter = Counter()
    for i, s in enumerate(steps):
        for v in set(flat_ids(s.inputs)):
            readers[v] += 1
        for o in s.outputs:
            producer[o] = i
    groups = decode_qkv_groups(steps, producer, readers, keep, in_place_states or {})
    member_of = {m: g for g in groups for m in g}
    kernels: list[Kernel] = []
    for i, s in enumerate(steps):
        if s.kind == "view":
            continue  # an alias, not a launch
        group = member_of.get(i)
        if group is not None:
            if i == group[0]:
                kernels.append(Kernel("layout", pattern="rope_qkv_cache"))
            s.kernel = steps[group[0]].kernel if i != group[0] else len(kernels) - 1
            kernels[s.kernel].steps.append(i)
            continue
        arch = archetype_of(s.op)
        index = _join_target(steps, kernels, i, arch, producer, readers, keep, types)
        if index is None:
            index = len(kernels)
            kernels.append(Kernel(arch))
        else:
            k = kernels[index]
            k.pattern = "matmul_cast" if k.archetype == "matmul" else "pointwise_chain"
        s.kernel = index
        kernels[index].steps.append(i)
    return kernels


def _join_target(steps, kernels, i, arch, producer, readers, keep, types) -> int | None:
    s = steps[i]
    if arch != "pointwise":
        return None
    for v in flat_ids(s.inputs):
        j = producer.get(v)
        if j is None or steps[j].kernel < 0 or readers[v] != 1 or v in keep:
            continue
        k = kernels[steps[j].kernel]
        if k.pattern == "rope_qkv_cache" or k.pattern == "matmul_cast":
            continue
        if k.archetype == "matmul":
            out = types[s.outputs[0]].dtype.name
            if not (s.op == "cast" and out == "float32" and types[v].dtype.name in HALF
                    and steps[j].op in MATMUL_OPS and len(k.steps) == 1):
                continue
        elif k.archetype != "pointwise":
            continue
        others = [producer.get(u) for u in flat_ids(s.inputs) if u != v]
        if all(p is None or p < k.first or steps[p].kernel == steps[j].kernel for p in others):
            return steps[j].kernel
    return None


def decode_qkv_groups(steps, producer, readers, keep, in_place_states) -> list[tuple[int, ...]]:
    """(rope q, rope k, cache_write k, cache_write v) step indices of each decode attention whose
    q and k rotate with the same tables, whose k and v caches are written at one position and are
    states updated in place, and whose rotated k is read only by its cache write."""
    assigned = set(in_place_states.values())
    found = []
    for t, s in enumerate(steps):
        if s.op not in ("attention", "attention_lse"):
            continue
        a, c, d = (producer.get(v) for v in s.inputs[:3])
        if None in (a, c, d) or steps[a].op != "rope" or steps[c].op != "cache_write" \
                or steps[d].op != "cache_write":
            continue
        cw_k, cw_v = steps[c], steps[d]
        b = producer.get(cw_k.inputs[1])
        if b is None or steps[b].op != "rope":
            continue
        qa, kb = steps[a], steps[b]
        ok = (qa.inputs[1:] == kb.inputs[1:] and qa.attrs == kb.attrs
              and cw_k.inputs[2] == cw_v.inputs[2] and cw_k.attrs["axis"] == cw_v.attrs["axis"] == 2
              and readers[qa.outputs[0]] == 1 and readers[kb.outputs[0]] == 1
              and qa.outputs[0] not in keep and kb.outputs[0] not in keep
              and cw_k.outputs[0] in assigned and cw_v.outputs[0] in assigned
              and all(steps[m].kind == "compute" for m in (a, b, c, d)))
        if not ok:
            continue
        members = tuple(sorted((a, b, c, d)))
        externals = [v for m in members for v in flat_ids(steps[m].inputs)
                     if producer.get(v) not in members]
        if all(_ready(v, steps, producer) < members[0] for v in externals):
            found.append(members)
    return found


def _ready(v: int, steps, producer) -> int:
    """The step at which value v exists: its producer, or for a view, the step its base exists."""
    p = producer.get(v)
    while p is not None and steps[p].kind == "view":
        p = producer.get(next(flat_ids(steps[p].inputs)))
    return -1 if p is None else p


def kernel_counts(kernels: list[Kernel]) -> dict[str, int]:
    c = Counter(k.archetype for k in kernels)
    return {a: c[a] for a in ARCHETYPES if c[a]}
