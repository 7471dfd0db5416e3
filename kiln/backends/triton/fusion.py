"""Which Plan steps this backend runs as one launch.

The compile pipeline's kernel groups assume step-by-step execution (its memory plan frees
a value at its last reading *step*); a fused launch reads its inputs later or earlier than
the steps it replaces, so the Triton backend decides its own fusions here and plans its own
arena over the resulting launches. Patterns, in the order they claim steps:

- matmul prologue: rms_norm / layer_norm whose only reader is a linear's `x`;
- matmul epilogue: split into halves + swiglu/geglu (gated activation), silu/gelu/relu,
  a residual add whose other operand exists before the matmul, a cast to float32;
- pointwise chains: a pointwise step joins the chain that produced its input when that
  input has no other reader (the chain then runs at the position of its last step; every
  input of the chain exists by then, since steps are in topological order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.compile.plan import Plan
from kiln.compile.step_inputs import flat_ids

from .kernels.pointwise import supports as pointwise_supports

MATMUL_OPS = ("linear", "fused_linear", "matmul")
NORM_OPS = ("rms_norm", "layer_norm")
ACT_OPS = {"silu": "silu", "relu": "relu"}


@dataclass
class MatmulFusion:
    norm_step: int | None = None
    activation: str = "none"
    residual: int | None = None          # value id added in the epilogue
    out: int = -1                        # value id the launch finally writes
    round_to_input: bool = False         # a cast to float32 fused: round to the input dtype first
    absorbed: list[int] = field(default_factory=list)


@dataclass
class FusionPlan:
    matmul: dict[int, MatmulFusion] = field(default_factory=dict)   # matmul step -> its fusion
    groups: dict[int, list[int]] = field(default_factory=dict)      # last step -> pointwise chain steps
    absorbed: set[int] = field(default_factory=set)                  # steps run inside another launch



def plan_fusions(plan: Plan, keep: set[int], pointwise_ok=None) -> FusionPlan:
    steps = plan.steps
    types = plan.types
    producer: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        for v in flat_ids(s.inputs):
            readers.setdefault(v, []).append(i)
        for o in s.outputs:
            producer[o] = i
    fp = FusionPlan()

    def only_reader(v: int) -> int | None:
        r = readers.get(v, [])
        if v in keep or len(set(r)) != 1 or len(r) != 1:
            return None
        return r[0]

    def exists_before(v: int, i: int) -> bool:
        p = producer.get(v)
        return p is None or p < i

    for i, s in enumerate(steps):
        if s.op not in MATMUL_OPS or i in fp.absorbed:
            continue
        f = MatmulFusion(out=s.outputs[0])
        attrs = s.attrs
        plain = s.op != "fused_linear" or (attrs["activation"] == "none" and s.inputs[3] is None)
        # prologue
        if s.op == "linear" or (s.op == "fused_linear" and attrs["norm"] == "none"):
            x = s.inputs[0]
            p = producer.get(x)
            if p is not None and steps[p].op in NORM_OPS and only_reader(x) == i and p not in fp.absorbed \
                    and steps[p].inputs[1] is not None:   # the prologue needs the norm's weight
                f.norm_step = p
                f.absorbed.append(p)
        # epilogue
        y = s.outputs[0]
        in_dtype = types[y].dtype.name
        while plain:
            j = only_reader(y)
            if j is None or j in fp.absorbed:
                break
            t = steps[j]
            if t.op == "split" and f.activation == "none" and f.residual is None and len(t.outputs) == 2 \
                    and t.attrs["sizes"][0] == t.attrs["sizes"][1] \
                    and t.attrs["axis"] % len(types[y].shape) == len(types[y].shape) - 1:
                g, u = t.outputs
                k = only_reader(g)
                if k is None or only_reader(u) != k or steps[k].op not in ("swiglu", "geglu") \
                        or steps[k].inputs != [g, u]:
                    break
                act = steps[k].op
                if act == "geglu":
                    act = {"none": "geglu", "tanh": "geglu_tanh"}.get(steps[k].attrs.get("approximate"))
                    if act is None:
                        break
                f.activation = act
                f.absorbed += [j, k]
                y = steps[k].outputs[0]
                continue
            if t.op in ("silu", "relu", "gelu") and f.activation == "none" and f.residual is None:
                act = ACT_OPS.get(t.op) or {"none": "gelu", "tanh": "gelu_tanh"}.get(t.attrs.get("approximate"))
                if act is None:
                    break
                f.activation = act
                f.absorbed.append(j)
                y = t.outputs[0]
                continue
            if t.op == "add" and f.residual is None:
                other = t.inputs[1] if t.inputs[0] == y else t.inputs[0]
                if other == y or types[t.outputs[0]].shape != types[y].shape \
                        or types[other].dtype != types[y].dtype or not exists_before(other, i):
                    break
                f.residual = other
                f.absorbed.append(j)
                y = t.outputs[0]
                continue
            if t.op == "cast" and types[t.outputs[0]].dtype.name == "float32" and \
                    in_dtype in ("bfloat16", "float16", "float32"):
                f.round_to_input = in_dtype != "float32"
                f.absorbed.append(j)
                y = t.outputs[0]
            break
        f.out = y
        if f.absorbed or f.out != s.outputs[0]:
            fp.matmul[i] = f
            fp.absorbed.update(f.absorbed)

    # pointwise chains: absorb producer chains whose output only this chain reads (a DAG is fine:
    # a value read by several steps joins once all of its readers are in the chain)
    group_of: dict[int, int] = {}    # step -> last step of its group
    ok = pointwise_ok or (lambda step: pointwise_supports(step.op, step.attrs))
    for i, s in enumerate(steps):
        if i in fp.absorbed or s.kind == "view" or len(s.outputs) != 1 or not ok(s):
            continue
        members = {i}
        changed = True
        while changed:
            changed = False
            produced = {o for m in members for o in steps[m].outputs}
            for v in {v for m in members for v in flat_ids(steps[m].inputs)} - produced:
                p = producer.get(v)
                if p is None or group_of.get(p) != p or p in fp.absorbed or p not in fp.groups or v in keep:
                    continue
                if all(r in members for r in readers.get(v, [])):
                    members.update(fp.groups.pop(p))
                    changed = True
        ordered = sorted(members)
        for m in ordered:
            group_of[m] = i
        fp.groups[i] = ordered
        fp.absorbed.update(m for m in ordered if m != i)
    return fp
