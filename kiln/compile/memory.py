"""Liveness analysis and arena memory planning, over kernel lifetimes.

Every value a step computes gets a byte range in one arena per dtype. Values that are
views of another (reshape, transpose, slices) share their base's storage, so a storage
stays live until the last read of any of its views. A value read by a kernel it was not
produced in stays live until that kernel's last step, where a fused launch runs, so one
plan is right both for a backend that runs a kernel's steps one by one and for one that
launches the kernel once. Storages whose lifetimes do not overlap share bytes; a pointwise
kernel may write its output over an input that dies there (in place).

States (buffers that persist across runs) live outside the arenas. A value assigned to a
state is computed straight into the state's buffer when nothing reads the old value after
the kernel that computes the new one (a KV cache's `cache_write`, an optimizer update);
otherwise the executor copies it there at the end of the run. Assignment is a linear scan
with best-fit over freed blocks.

A concat's inputs that exist only to be concatenated are computed straight into their slices of
its output (`MemoryPlan.slices`) when their producer can write a strided slot (a pointwise kernel,
a reshape's copy): the concat's storage then starts at the first such producer, and the concat
copies only the rest. A training step's q/k/v and gate/up gradients were copied twice otherwise.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from kiln.ir import get_op

from .step_inputs import flat_ids
from .strides import contiguous_strides, reshape_strides

ALIGN = 256  # byte alignment of every slot: what cuBLAS and vectorized GPU loads want


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
    state: str | None = None       # the state buffer it lives in (outside the arenas)


@dataclass
class MemoryPlan:
    storages: dict[int, Storage]          # owner value id -> storage
    value_storage: dict[int, int]         # value id -> owner of the storage it lives in (views included)
    arenas: dict[str, int] = field(default_factory=dict)  # dtype -> bytes
    state_in_place: dict[str, int] = field(default_factory=dict)  # state -> value computed into its buffer
    slices: dict[int, tuple[int, int]] = field(default_factory=dict)  # value -> (axis, start): its slice of
                                                                      # the concat output that owns its storage

    @property
    def planned_bytes(self) -> int:
        return sum(self.arenas.values())

    @property
    def unplanned_bytes(self) -> int:
        """What one buffer per intermediate would take."""
        return sum(s.nbytes for s in self.storages.values() if s.state is None)


def _aligned(n: int) -> int:
    return max(ALIGN, (n + ALIGN - 1) // ALIGN * ALIGN)


def plan_memory(steps, types: dict, keep: set[int], reuse: bool = True, kernels=None,
                states: dict[str, tuple[int, int]] | None = None) -> MemoryPlan:
    """Assign arena offsets to every value computed by a `compute` step.

    `types`: value id -> TensorType; `keep`: values read after the last step (outputs);
    `kernels`: the launch groups (`group_kernels`), whose lifetimes the plan covers;
    `states`: state name -> (value read, value assigned). With reuse=False every storage
    gets its own bytes (the unplanned baseline).
    """
    n = len(steps)
    value_storage: dict[int, int] = {}
    storages: dict[int, Storage] = {}
    for name, (vin, _) in (states or {}).items():
        t = types[vin]
        storages[vin] = Storage(vin, t.dtype.name, t.nbytes, -1, n, state=name)
        value_storage[vin] = vin
    in_place = _states_in_place(steps, types, kernels, states or {}, value_storage)
    for i, s in enumerate(steps):
        if s.kind == "view":
            base = next(flat_ids(s.inputs))
            for o in s.outputs:
                if base in value_storage:
                    value_storage[o] = value_storage[base]
            continue
        for o in s.outputs:
            if o in in_place:
                value_storage[o] = in_place[o]
                continue
            t = types[o]
            storages[o] = Storage(o, t.dtype.name, t.nbytes, i, i)
            value_storage[o] = o
    slices = _concat_slices(steps, types, kernels, keep, storages) if reuse else {}
    for v, (owner, producer, _, _) in slices.items():
        del storages[v]
        value_storage[v] = owner
        storages[owner].start = min(storages[owner].start, producer)
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            st = value_storage.get(v)
            if st is not None:
                storages[st].end = max(storages[st].end, _read_end(steps, kernels, i, v, value_storage))
    for v in keep:
        st = value_storage.get(v)
        if st is not None:
            storages[st].end = n
    plan = MemoryPlan(storages, value_storage,
                      state_in_place={storages[vin].state: o for o, vin in in_place.items()},
                      slices={v: (axis, start) for v, (_, _, axis, start) in slices.items()})
    if reuse:
        _assign(steps, plan, types, kernels)
    else:
        for st in storages.values():
            if st.state is not None:
                continue
            top = plan.arenas.get(st.dtype, 0)
            st.offset = top
            plan.arenas[st.dtype] = top + _aligned(st.nbytes)
    return plan


def _concat_slices(steps, types, kernels, keep, storages) -> dict[int, tuple[int, int, int, int]]:
    """Concat input -> (the concat output, its producer's step, the axis, its start there), for the
    inputs computed into their slice: read by the concat alone, not kept, each its own storage, made by a pointwise kernel or
    by a reshape's copy whose slice takes the reshape's input shape as a view."""
    producer = {o: i for i, s in enumerate(steps) if s.kind == "compute" for o in s.outputs}
    readers: dict[int, int] = {}
    for s in steps:
        for v in flat_ids(s.inputs):
            readers[v] = readers.get(v, 0) + 1
    out: dict[int, tuple[int, int]] = {}
    owners: set[int] = set()   # concat outputs holding slices: never themselves computed into a slice
    for c, s in enumerate(steps):
        if s.op != "concat" or s.kind != "compute" or s.outputs[0] not in storages:
            continue
        o = s.outputs[0]
        if storages[o].state is not None or o in out or \
                kernels is not None and s.kernel >= 0 and kernels[s.kernel].pattern != "single":
            continue
        axis = s.attrs["axis"] % types[o].rank
        off = 0
        for v in s.inputs[0]:
            n = types[v].shape[axis]
            p = producer.get(v)
            if p is not None and readers.get(v) == 1 and v not in keep and v in storages and v not in out \
                    and v not in owners and _writes_strided(steps, types, kernels, p, v, types[o].shape, axis):
                out[v] = (o, p, axis, off)
                owners.add(o)
            off += n
    return out


def _writes_strided(steps, types, kernels, p: int, v: int, shape, axis: int) -> bool:
    """Can step p write value v into a slice along `axis` of a contiguous `shape`?"""
    s = steps[p]
    kern = kernels[s.kernel] if kernels is not None and s.kernel >= 0 else None
    if s.op == "reshape":
        if kern is not None and kern.pattern != "single":
            return False
        sliced = list(shape)
        sliced[axis] = types[v].shape[axis]
        return reshape_strides(sliced, contiguous_strides(shape), types[s.inputs[0]].shape) is not None
    try:
        pointwise = get_op(s.op).category == "pointwise"
    except KeyError:
        return False
    return pointwise and (kern is None or kern.archetype == "pointwise" and kern.pattern in ("single", "pointwise_chain"))


def _read_end(steps, kernels, i: int, v: int, value_storage) -> int:
    """When step i's read of v ends: at i when v is made inside i's kernel (a fused launch keeps
    it in registers), else at the kernel's last step (where a fused launch reads it)."""
    k = steps[i].kernel
    if kernels is None or k < 0:
        return i
    kern = kernels[k]
    producer_kernel = next((steps[j].kernel for j in kern.steps if v in steps[j].outputs), None)
    return i if producer_kernel == k else kern.last


def sole_cache_writes(steps, pairs) -> dict[int, int]:
    """State value -> assigned value, for (state, assigned) pairs where the only reader of the state
    is the cache_write that makes its new value: always updated in place, whatever the kernels."""
    readers: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            readers.setdefault(v, []).append(i)
    out = {}
    for vin, vout in pairs:
        r = readers.get(vin, [])
        if len(r) == 1 and steps[r[0]].op == "cache_write" and steps[r[0]].outputs == [vout] \
                and steps[r[0]].inputs[0] == vin and steps[r[0]].inputs[1] != vin:
            out[vin] = vout
    return out


def _states_in_place(steps, types, kernels, states, value_storage) -> dict[int, int]:
    """Assigned value -> state storage, for the state updates that can be computed in place."""
    producer = {o: i for i, s in enumerate(steps) for o in s.outputs}
    readers: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            readers.setdefault(v, []).append(i)
    base = dict(value_storage)  # state value -> itself; views of states follow below
    for s in steps:
        if s.kind == "view" and next(flat_ids(s.inputs)) in base:
            for o in s.outputs:
                base[o] = base[next(flat_ids(s.inputs))]
    sole = sole_cache_writes(steps, states.values())
    out: dict[int, int] = {}
    for name, (vin, vout) in states.items():
        i = producer.get(vout)
        if i is None or steps[i].kind != "compute" or len(steps[i].outputs) != 1 or vout in out:
            continue
        if types[vout] != types[vin]:
            continue
        kern = kernels[steps[i].kernel] if kernels is not None and steps[i].kernel >= 0 else None
        if sole.get(vin) == vout:
            out[vout] = vin   # nothing else reads the old cache: write the new rows into it
            continue
        if kern is not None and kern.last != i and kern.archetype != "pointwise":
            continue  # a fused launch writes only its kernel's last value (a pointwise chain: all it keeps)
        first = kern.first if kern is not None else i
        members = set(kern.chain_of(i)) if kern is not None else {i}
        ok = True
        for v, b in base.items():
            if b != vin:
                continue
            for j in readers.get(v, []):
                if j in members:
                    st = steps[j]
                    if st.op == "cache_write" and j == i and v == vin and st.inputs[0] == vin \
                            and st.inputs[1] != vin:
                        continue  # the cache itself: only the new rows are written
                    if v == vin and j <= i and _elementwise(st, types, vin, vout):
                        continue  # read at the element it writes (and, step by step, before it)
                    ok = False
                else:
                    jk = steps[j].kernel
                    end = kernels[jk].last if kernels is not None and jk >= 0 else j
                    if end >= first:
                        ok = False
        if ok:
            out[vout] = vin
    return out


def _elementwise(step, types, vin: int, vout: int) -> bool:
    try:
        pointwise = get_op(step.op).category == "pointwise"
    except KeyError:
        return False
    return pointwise and types[vin].shape == types[vout].shape and \
        all(types[o].shape == types[vout].shape for o in step.outputs)


def _assign(steps, plan: MemoryPlan, types, kernels=None) -> None:
    free: dict[str, list[tuple[int, int]]] = {}   # dtype -> sorted (size, offset) free blocks
    blocks: dict[str, dict[int, int]] = {}         # dtype -> offset -> size of free blocks (for merging)
    ends: dict[int, list[Storage]] = {}
    early: dict[int, list[Storage]] = {}   # concat outputs whose slices are computed before them
    for st in plan.storages.values():
        ends.setdefault(st.end, []).append(st)
        if st.state is None and st.start >= 0 and st.owner not in steps[st.start].outputs:
            early.setdefault(st.start, []).append(st)
    for i, s in enumerate(steps):
        for st in early.pop(i, []):
            st.offset = _alloc(free, blocks, plan.arenas, st.dtype, _aligned(st.nbytes))
        if s.kind == "compute":
            for o in s.outputs:
                st = plan.storages.get(o)
                if st is None or st.offset >= 0:
                    continue  # computed into a state buffer or a concat's slice, or allocated early
                donor = _inplace_donor(steps, kernels, o, plan, types, i) if len(s.outputs) == 1 else None
                if donor is not None:
                    st.offset, st.inplace_of = donor.offset, donor.owner
                    donor.donated = True  # its bytes now belong to the output; do not free them below
                    continue
                st.offset = _alloc(free, blocks, plan.arenas, st.dtype, _aligned(st.nbytes))
        for st in ends.pop(i, []):
            if not st.donated and st.offset >= 0 and st.state is None:
                _release(free, blocks, plan.arenas, st.dtype, st.offset, _aligned(st.nbytes))


def _inplace_donor(steps, kernels, out: int, plan: MemoryPlan, types, i: int):
    """An input storage the output may overwrite: a pointwise op, same bytes and layout, dying here,
    and read by the step's kernel only directly (a fused launch reads each element where it writes)."""
    step = steps[i]
    try:
        if get_op(step.op).category != "pointwise":
            return None
    except KeyError:
        return None
    t = types[out]
    members = kernels[step.kernel].chain_of(i) if kernels is not None and step.kernel >= 0 else [i]
    for v in flat_ids(step.inputs):
        owner = plan.value_storage.get(v)
        if owner != v:  # only a value that owns its storage has the output's layout
            continue
        st = plan.storages[owner]
        if st.end == i and not st.donated and st.state is None and types[v].shape == t.shape \
                and types[v].dtype == t.dtype and st.offset >= 0 \
                and all(u == v for j in members for u in flat_ids(steps[j].inputs)
                        if plan.value_storage.get(u) == owner):
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
