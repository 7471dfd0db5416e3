"""Liveness analysis and arena memory planning.

Every value a step computes gets a byte range in one arena per dtype. Values that are
views of another (reshape, transpose, slices) share their base's storage, so a storage
stays live until the last read of any of its views. Storages whose lifetimes do not
overlap share bytes; a pointwise step may write its output over an input that dies at
that step (in place). Assignment is a linear scan with best-fit over freed blocks.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from kiln.ir import get_op

from .step_inputs import flat_ids

ALIGN = 64


@dataclass
class Storage:
    """One allocation: the value that owns it, its size, its arena and offset, and its lifetime."""
    owner: int
    dtype: str
    nbytes: int
    start: int            # step that writes it
    end: int              # last step that reads it (or through a view of it)
    offset: int = -1
    inplace_of: int | None = None  # storage (by owner) whose bytes this one took over at `start`
    donated: bool = False          # its bytes passed to an in-place output at its last read


@dataclass
class MemoryPlan:
    storages: dict[int, Storage]          # owner value id -> storage
    value_storage: dict[int, int]         # value id -> owner of the storage it lives in (views included)
    arenas: dict[str, int] = field(default_factory=dict)  # dtype -> bytes

    @property
    def planned_bytes(self) -> int:
        return sum(self.arenas.values())

    @property
    def unplanned_bytes(self) -> int:
        """What one buffer per intermediate would take."""
        return sum(s.nbytes for s in self.storages.values())


def _aligned(n: int) -> int:
    return max(ALIGN, (n + ALIGN - 1) // ALIGN * ALIGN)


def plan_memory(steps, types: dict, keep: set[int], reuse: bool = True) -> MemoryPlan:
    """Assign arena offsets to every value computed by a `compute` step.

    `types`: value id -> TensorType; `keep`: values read after the last step (outputs).
    With reuse=False every storage gets its own bytes (the unplanned baseline).
    """
    n = len(steps)
    value_storage: dict[int, int] = {}
    storages: dict[int, Storage] = {}
    for i, s in enumerate(steps):
        if s.kind == "view":
            base = next(flat_ids(s.inputs))
            for o in s.outputs:
                if base in value_storage:
                    value_storage[o] = value_storage[base]
            continue
        for o in s.outputs:
            t = types[o]
            storages[o] = Storage(o, t.dtype.name, t.nbytes, i, i)
            value_storage[o] = o
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            st = value_storage.get(v)
            if st is not None:
                storages[st].end = max(storages[st].end, i)
    for v in keep:
        st = value_storage.get(v)
        if st is not None:
            storages[st].end = n
    plan = MemoryPlan(storages, value_storage)
    if reuse:
        _assign(steps, plan, types)
    else:
        for st in storages.values():
            top = plan.arenas.get(st.dtype, 0)
            st.offset = top
            plan.arenas[st.dtype] = top + _aligned(st.nbytes)
    return plan


def _assign(steps, plan: MemoryPlan, types) -> None:
    free: dict[str, list[tuple[int, int]]] = {}   # dtype -> sorted (size, offset) free blocks
    blocks: dict[str, dict[int, int]] = {}         # dtype -> offset -> size of free blocks (for merging)
    ends: dict[int, list[Storage]] = {}
    for st in plan.storages.values():
        ends.setdefault(st.end, []).append(st)
    for i, s in enumerate(steps):
        if s.kind == "compute":
            for o in s.outputs:
                st = plan.storages[o]
                donor = _inplace_donor(s, o, plan, types, i) if len(s.outputs) == 1 else None
                if donor is not None:
                    st.offset, st.inplace_of = donor.offset, donor.owner
                    donor.donated = True  # its bytes now belong to the output; do not free them below
                    continue
                st.offset = _alloc(free, blocks, plan.arenas, st.dtype, _aligned(st.nbytes))
        for st in ends.pop(i, []):
            if not st.donated and st.offset >= 0:
                _release(free, blocks, plan.arenas, st.dtype, st.offset, _aligned(st.nbytes))


def _inplace_donor(step, out: int, plan: MemoryPlan, types, i: int):
    """An input storage the output may overwrite: a pointwise op, same bytes and layout, dying here."""
    try:
        if get_op(step.op).category != "pointwise":
            return None
    except KeyError:
        return None
    t = types[out]
    for v in flat_ids(step.inputs):
        owner = plan.value_storage.get(v)
        if owner != v:  # only a value that owns its storage has the output's layout
            continue
        st = plan.storages[owner]
        if st.end == i and not st.donated and types[v].shape == t.shape and types[v].dtype == t.dtype \
                and st.offset >= 0:
            return st
    return None


def _alloc(free, blocks, arenas, dtype: str, size: int) -> int:
    fl = free.setdefault(dtype, [])
    k = bisect.bisect_left(fl, (size, -1))
    if k < len(fl):
        bsize, off = fl.pop(k)
        del blocks[dtype][off]
        if bsize > size:
            _insert(free, blocks, dtype, off + size, bsize - size)
        return off
    top = arenas.get(dtype, 0)
    # grow into a free block that ends at the top of the arena, if there is one
    for off, bsize in list(blocks.get(dtype, {}).items()):
        if off + bsize == top:
            fl.remove((bsize, off))
            del blocks[dtype][off]
            arenas[dtype] = off + size
            return off
    arenas[dtype] = top + size
    return top


def _release(free, blocks, arenas, dtype: str, off: int, size: int) -> None:
    b = blocks.setdefault(dtype, {})
    # merge with the free neighbours on both sides
    for o, sz in list(b.items()):
        if o + sz == off:
            free[dtype].remove((sz, o))
            del b[o]
            off, size = o, size + sz
        elif off + size == o:
            free[dtype].remove((sz, o))
            del b[o]
            size += sz
    _insert(free, blocks, dtype, off, size)


def _insert(free, blocks, dtype, off, size):
    bisect.insort(free.setdefault(dtype, []), (size, off))
    blocks.setdefault(dtype, {})[off] = size
