"""Kernel grouping: which plan steps one backend launch covers (launch granularity).

This is the one place that decides it, for every backend: the NumPy executor runs a
kernel's steps in order, the Triton backend emits one launch per kernel. Fusions that
change the math (a matmul's norm prologue, activation and residual epilogue, attention)
are the optimizer's fused ops; grouping only decides what runs in one launch:

- pointwise chains: a pointwise step takes in the pointwise kernels before it whose
  results only the chain reads (a DAG of pointwise ops is one expression), and those of the
  chain's shape whose other readers all come after it (or that are outputs): they become
  more outputs of the launch (an optimizer update writes the new moments and the parameter
  in one pass); the launch runs at the chain's last step;
- sibling chains: a pointwise chain and the one launched right after it, of one shape, reading
  a common operand and neither the other's results, are one launch (the two gradients of a
  swiglu read gate and dy once) when nothing reads the first's results before the second runs;
- multi-tensor launches: pointwise chains that compute the same expression (same ops, attributes,
  dtypes and constants; each operand full-size or one element) over independent tensors, such as
  the optimizer update of every parameter, are one launch at the last chain's step, when nothing
  reads any of their results before it (`multi_tensor_groups`);
- a matmul's cast to float32 (half-precision logits): the launch rounds its result to
  the matmul dtype and stores float32;
- rms_norm_backward's dx plus the gradient already flowing down the residual stream: the
  launch adds it and stores the sum (pattern `norm_backward_add`);
- two ropes by one table launched one after the other (q and k), the second's input ready
  before the first runs and nothing reading the first's result in between: one launch
  (pattern `rope_pair`);
- a decode step's attention with its q/k/v prologue: rope(q), rope(k) written into its
  cache, v written into its cache at the same position, and the attention reading them, when
  both caches are states updated in place (`decode_qkv_groups`); a backend launches them as
  one attention (Triton: for one token per row) or as a rope + cache-write launch and the
  attention.
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
    pattern: str = "single"   # single | pointwise_chain | matmul_cast | rope_qkv_cache_attention | multi_tensor
    parts: list[list[int]] = field(default_factory=list)   # multi_tensor: the chains, in launch order

    @property
    def first(self) -> int:
        return self.steps[0]

    @property
    def last(self) -> int:
        return self.steps[-1]

    def chain_of(self, step: int) -> list[int]:
        """The steps that compute together with `step` element by element: its chain of a
        multi-tensor launch, else the whole kernel."""
        return next((p for p in self.parts if step in p), self.steps)


def archetype_of(op: str) -> str:
    try:
        return _BY_CATEGORY.get(get_op(op).category, "layout")
    except KeyError:
        return "layout"


def group_kernels(steps, keep: set[int], types: dict, in_place_states: dict[int, int] | None = None,
                  constants: dict | None = None) -> list[Kernel]:
    """Assign `step.kernel` for every compute step (views stay -1) and return the kernels in launch
    order (each launches at its last step).

    `keep`: values read after the plan (graph outputs, assigned states); `types`: value id ->
    TensorType; `in_place_states`: state value id -> the value assigned to it, for the
    states whose update is always in place; `constants`: value id -> array (chains that differ
    only in a constant's value are not one multi-tensor launch).
    """
    producer: dict[int, int] = {}  # value id -> step index
    readers: dict[int, set[int]] = {}
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            readers.setdefault(v, set()).add(i)
        for o in s.outputs:
            producer[o] = i
    groups: dict[int, tuple[str, str, list[int]]] = {}   # last step -> (archetype, pattern, members)
    group_of: dict[int, int] = {}                          # step -> last step of its group
    for members in decode_qkv_groups(steps, producer, readers, keep, in_place_states or {}):
        groups[members[-1]] = ("attention", "rope_qkv_cache_attention", list(members))
        group_of.update((m, members[-1]) for m in members)
    for i, s in enumerate(steps):
        if s.kind == "view" or i in group_of:
            continue
        arch = archetype_of(s.op)
        members = [i]
        pattern = "single"
        if arch == "pointwise" and len(s.outputs) == 1:
            cast_of = _matmul_cast_source(steps, i, producer, readers, keep, types, groups)
            norm_of = _norm_backward_add_source(steps, i, producer, readers, keep, types, groups)
            if cast_of is not None:
                del groups[cast_of]
                arch, pattern, members = "matmul", "matmul_cast", [cast_of, i]
            elif norm_of is not None:
                del groups[norm_of]
                arch, pattern, members = "reduction", "norm_backward_add", [norm_of, i]
            else:
                members = _pointwise_chain(steps, i, producer, readers, keep, groups, group_of, types)
                pattern = "pointwise_chain" if len(members) > 1 else "single"
        groups[i] = (arch, pattern, members)
        group_of.update((m, i) for m in members)
    _pair_ropes(steps, groups, readers, producer)
    _merge_siblings(steps, groups, readers, keep, types)
    parts_of = {}
    for parts in multi_tensor_groups(steps, groups, readers, keep, types, constants or {}):
        for members in parts:
            del groups[members[-1]]
        groups[parts[-1][-1]] = ("pointwise", "multi_tensor", sorted(m for p in parts for m in p))
        parts_of[parts[-1][-1]] = parts
    kernels = []
    for last in sorted(groups):
        arch, pattern, members = groups[last]
        for m in members:
            steps[m].kernel = len(kernels)
        kernels.append(Kernel(arch, sorted(members), pattern, parts_of.get(last, [])))
    return kernels


def _pair_ropes(steps, groups, readers, producer) -> None:
    """Make each rope and the rope launched right after it, by the same tables, one kernel."""
    order = sorted(groups)
    for a_last, b_last in zip(order, order[1:]):
        if a_last not in groups:
            continue
        (_, pat_a, a), (_, pat_b, b) = groups[a_last], groups[b_last]
        if pat_a != "single" or pat_b != "single" or steps[a[0]].op != "rope" or steps[b[0]].op != "rope":
            continue
        ra, rb = steps[a[0]], steps[b[0]]
        if ra.inputs[1:] != rb.inputs[1:] or ra.attrs != rb.attrs or _ready(rb.inputs[0], steps, producer) >= a[0] \
                or any(r < b_last for r in readers.get(ra.outputs[0], ())):
            continue
        del groups[a_last]
        groups[b_last] = ("layout", "rope_pair", [a[0], b[0]])


def _merge_siblings(steps, groups, readers, keep, types) -> None:
    """Merge each pointwise chain into the pointwise chain launched next (see the module doc)."""
    order = sorted(groups)
    for a_last, b_last in zip(order, order[1:]):
        if a_last not in groups:
            continue
        (arch_a, pat_a, a), (arch_b, pat_b, b) = groups[a_last], groups[b_last]
        if arch_a != "pointwise" or arch_b != "pointwise" or {pat_a, pat_b} - {"single", "pointwise_chain"}:
            continue
        outs_a = {o for m in a for o in steps[m].outputs}
        outs_b = {o for m in b for o in steps[m].outputs}
        shapes = {types[o].shape for o in outs_a | outs_b}
        ins_a = {v for m in a for v in flat_ids(steps[m].inputs)} - outs_a
        ins_b = {v for m in b for v in flat_ids(steps[m].inputs)} - outs_b
        if len(shapes) != 1 or not ins_a & ins_b or ins_b & outs_a or ins_a & outs_b:
            continue
        if any(r < b_last for o in outs_a for r in readers.get(o, ()) if r not in a):
            continue
        del groups[a_last]
        groups[b_last] = ("pointwise", "pointwise_chain", sorted(a + b))


def multi_tensor_groups(steps, groups, readers, keep, types, constants) -> list[list[list[int]]]:
    """Runs of pointwise chains with one signature (`_chain_signature`), each run launchable at its
    last chain's step: no step outside a chain reads a chain's result before that."""
    by_sig: dict[tuple, list[list[int]]] = {}
    for last in sorted(groups):
        arch, _, members = groups[last]
        if arch != "pointwise":
            continue
        sig = _chain_signature(steps, members, readers, keep, types, constants)
        if sig is not None:
            by_sig.setdefault(sig, []).append(members)
    found = []
    for chains in by_sig.values():
        run: list[list[int]] = []
        first_read = len(steps)     # the earliest step outside the run that reads one of its results
        for members in chains:
            read = min(_outside_readers(steps, members, readers), default=len(steps))
            if run and first_read > members[-1]:
                run.append(members)
                first_read = min(first_read, read)
                continue
            if len(run) > 1:
                found.append(run)
            run, first_read = [members], read
        if len(run) > 1:
            found.append(run)
    return found


def _outside_readers(steps, members, readers) -> set[int]:
    inside = set(members)
    return {r for m in members for o in steps[m].outputs for r in readers.get(o, ())} - inside


def _chain_signature(steps, members, readers, keep, types, constants):
    """What makes chains one multi-tensor expression: per step its op, attributes and operands (a
    step of the chain by position; else dtype and full-size / one element, constants by value),
    and which results leave the chain. None when an operand broadcasts otherwise."""
    pos = {o: k for k, m in enumerate(members) for o in steps[m].outputs}
    shape = types[steps[members[-1]].outputs[0]].shape
    inside = set(members)
    sig = []
    for m in members:
        s = steps[m]
        args = []
        for v in flat_ids(s.inputs):
            if v in pos:
                args.append(("step", pos[v]))
            elif v in constants and types[v].size == 1:
                args.append(("const", types[v].dtype.name, repr(constants[v].tolist()
                                                             if hasattr(constants[v], "tolist") else constants[v])))
            elif types[v].shape == shape:
                args.append(("full", types[v].dtype.name))
            elif types[v].size == 1:
                args.append(("one", types[v].dtype.name))
            else:
                return None
        out = s.outputs[0]
        leaves = out in keep or not set(readers.get(out, ())) <= inside
        sig.append((s.op, repr(sorted(s.attrs.items())), tuple(args), types[out].dtype.name, leaves))
    return tuple(sig)


def _matmul_cast_source(steps, i, producer, readers, keep, types, groups) -> int | None:
    """The matmul step whose half-precision result step i casts to float32, when nothing else reads it."""
    s = steps[i]
    if s.op != "cast" or types[s.outputs[0]].dtype.name != "float32":
        return None
    v = s.inputs[0]
    j = producer.get(v)
    if j is None or j not in groups or groups[j][2] != [j] or steps[j].op not in MATMUL_OPS \
            or readers.get(v) != {i} or v in keep or types[v].dtype.name not in HALF:
        return None
    return j


def _norm_backward_add_source(steps, i, producer, readers, keep, types, groups) -> int | None:
    """The rms_norm_backward step whose dx step i adds to a tensor of its shape and dtype, when
    nothing else reads dx and nothing reads its dweight before step i (the launch runs there)."""
    s = steps[i]
    if s.op != "add" or len(s.inputs) != 2 or s.inputs[0] == s.inputs[1]:
        return None
    out_t = types[s.outputs[0]]
    best = None
    for v in s.inputs:
        j = producer.get(v)
        if j is None or j not in groups or groups[j][2] != [j] or steps[j].op != "rms_norm_backward" \
                or steps[j].outputs[0] != v or readers.get(v) != {i} or v in keep:
            continue
        other = s.inputs[1] if v == s.inputs[0] else s.inputs[0]
        if types[v] != out_t or types[other] != out_t or producer.get(other) == j:
            continue
        if any(r < i for o in steps[j].outputs[1:] for r in readers.get(o, ())):
            continue
        best = j if best is None else max(best, j)
    return best


def _pointwise_chain(steps, i, producer, readers, keep, groups, group_of, types) -> list[int]:
    """Step i and the pointwise groups before it whose results only the chain reads (a DAG is fine:
    a value read by several steps joins once all of its readers are in the chain), or that have
    the chain's shape and no reader outside the chain before step i (they become outputs too).
    A group joins whole, whichever of its steps makes the value read (sin(x) and cos(x) of one x
    are one chain)."""
    members = {i}
    shape = types[steps[i].outputs[0]].shape
    changed = True
    while changed:
        changed = False
        produced = {o for m in members for o in steps[m].outputs}
        for v in {v for m in members for v in flat_ids(steps[m].inputs)} - produced:
            p = group_of.get(producer.get(v))
            if p is None or p not in groups or groups[p][0] != "pointwise":
                continue
            group = set(groups[p][2])
            if not all(types[o].shape == shape and all(r > i for r in outside)
                       for m in group for o in steps[m].outputs
                       for outside in [readers.get(o, set()) - members - group] if o in keep or outside):
                continue
            members.update(groups.pop(p)[2])
            changed = True
    return sorted(members)


def decode_qkv_groups(steps, producer, readers, keep, in_place_states) -> list[tuple[int, ...]]:
    """(rope q, rope k, cache_write k, cache_write v, attention) step indices of each decode
    attention whose q and k rotate with the same tables, whose k and v caches are written at one
    position, are states updated in place and are read by the attention alone, and whose rotated
    q and k are read only by the attention and the cache write. The attention ends the group, so
    what the prologue reads stays live (and unclobbered) until the attention has run."""
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
              and len(readers[qa.outputs[0]]) == 1 and len(readers[kb.outputs[0]]) == 1
              and readers[cw_k.outputs[0]] == {t} and readers[cw_v.outputs[0]] == {t}
              and qa.outputs[0] not in keep and kb.outputs[0] not in keep
              and cw_k.outputs[0] in assigned and cw_v.outputs[0] in assigned
              and all(steps[m].kind == "compute" for m in (a, b, c, d)))
        if not ok:
            continue
        prologue = tuple(sorted((a, b, c, d)))
        externals = [v for m in prologue for v in flat_ids(steps[m].inputs)
                     if producer.get(v) not in prologue]
        if all(_ready(v, steps, producer) < prologue[0] for v in externals):
            found.append((*prologue, t))
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
