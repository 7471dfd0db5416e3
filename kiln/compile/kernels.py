"""Kernel grouping: which plan steps one backend kernel launch covers, by archetype.

Archetypes: pointwise chains; reductions (sum/max/mean, softmax, norms) with their
pointwise prologue and epilogue; matmuls with their epilogue; attention; layout/gather.
A step joins the kernel that produced its input when that input has no other reader
(so the intermediate never needs to leave registers) and every other input of the step
already exists when the kernel starts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kiln.ir import get_op

from .step_inputs import flat_ids

ARCHETYPES = ("pointwise", "reduction", "matmul", "attention", "layout")
_BY_CATEGORY = {"pointwise": "pointwise", "reduction": "reduction", "norm": "reduction", "matmul": "matmul",
                "attention": "attention"}


@dataclass
class Kernel:
    archetype: str
    steps: list[int] = field(default_factory=list)


def archetype_of(op: str) -> str:
    try:
        return _BY_CATEGORY.get(get_op(op).category, "layout")
    except KeyError:
        return "layout"


def group_kernels(steps, keep: set[int]) -> list[Kernel]:
    """Assign `step.kernel` for every compute step (views stay -1) and return the kernels.

    `keep`: values read after the plan (graph outputs).
    """
    producer: dict[int, int] = {}  # value id -> step index
    readers: Counter = Counter()
    for i, s in enumerate(steps):
        for v in set(flat_ids(s.inputs)):
            readers[v] += 1
        for o in s.outputs:
            producer[o] = i
    kernels: list[Kernel] = []
    for i, s in enumerate(steps):
        if s.kind == "view":
            continue  # an alias, not a launch
        arch = archetype_of(s.op)
        target, index = None, -1
        if arch in ("pointwise", "reduction") and s.kind == "compute":
            for v in flat_ids(s.inputs):
                j = producer.get(v)
                if j is None or steps[j].kernel < 0 or readers[v] != 1 or v in keep:
                    continue
                k = kernels[steps[j].kernel]
                if not _joinable(k.archetype, arch):
                    continue
                first = k.steps[0]
                others = [producer.get(u) for u in flat_ids(s.inputs) if u != v]
                if all(p is None or p < first or steps[p].kernel == steps[j].kernel for p in others):
                    target, index = k, steps[j].kernel
                    break
        if target is None:
            target, index = Kernel(arch), len(kernels)
            kernels.append(target)
        elif arch == "reduction" and target.archetype == "pointwise":
            target.archetype = "reduction"  # the pointwise chain becomes the reduction's prologue
        s.kernel = index
        target.steps.append(i)
    return kernels


def _joinable(producer_arch: str, consumer_arch: str) -> bool:
    if consumer_arch == "pointwise":  # an epilogue
        return producer_arch in ("pointwise", "reduction", "matmul", "attention")
    return producer_arch == "pointwise"  # a reduction with the pointwise chain before it


def kernel_counts(kernels: list[Kernel]) -> dict[str, int]:
    c = Counter(k.archetype for k in kernels)
    return {a: c[a] for a in ARCHETYPES if c[a]}
