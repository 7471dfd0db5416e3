"""Lowering: a Plan's kernels -> one launch each, over the Plan's memory.

The compile pipeline decides what one launch covers (`plan.kernels`) and where every value
lives (`plan.memory`: one arena per dtype, states updated in place); this module only
emits a Triton (or cuBLAS, or fallback) launch per kernel, at the kernel's last step.
Every tensor is first a *meta* tensor (shape, strides, no memory): views (reshape,
transpose, slice, split, broadcast) are strided meta views of their base, so they cost no
launch, and each kernel is specialized for the exact strides it will see. Storages are the
allocations behind them: the Plan's arena slots, inputs, states, parameters, values
computed from parameters at load time ("static"), constants, and backend scratch
(workspaces, split-K partials, contiguous copies a kernel needs). The executor later maps
each meta view onto real memory with the same strides.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from kiln.compile.plan import Plan
from kiln.compile.step_inputs import flat_ids

from .device import interpreting, kiln_dtype, programmatic_launch, torch_dtype
from .fallback import TORCH_FALLBACKS, HostLaunch, TorchLaunch
from .kernels import attention as attn_k
from .kernels import attention_backward as attn_bwd_k
from .kernels import cross_entropy as xent_k
from .kernels import layout as layout_k
from .kernels import matmul as mm_k
from .kernels.gemv import Gemv
from .kernels.norm_backward import RmsNormBackward
from .kernels import reduction as red_k
from .kernels.pointwise import MultiTensorPointwise, PointwiseExpr, PointwiseKernel, Ref
from .kernels.sum_squares import SumSquares

ALIGN = 256


@dataclass(eq=False)
class Storage:
    index: int
    kind: str                 # arena | input | state | param | static | const | temp | scratch
    dtype: torch.dtype
    numel: int
    vid: int | None = None
    offset: int = -1          # arena: the Plan's byte offset in its dtype's arena; else set by the executor
    arena: str | None = None  # arena: the kiln dtype name of the Plan arena it lives in
    state: str | None = None  # state: the state's name

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype, device="meta").element_size()


class Operand:
    """A tensor argument: a (meta) view of one storage."""

    __slots__ = ("storage", "meta")

    def __init__(self, storage: Storage, meta: torch.Tensor):
        self.storage, self.meta = storage, meta

    def derive(self, meta: torch.Tensor) -> "Operand":
        return Operand(self.storage, meta)


@dataclass
class Launch:
    archetype: str
    label: str
    fn: Callable
    args: tuple
    graph_safe: bool = True
    steps: tuple[int, ...] = ()   # the Plan steps it computes (empty for the final state copies)


@dataclass
class Program:
    storages: list[Storage]
    launches: list[Launch]
    inputs: dict[str, Operand]
    outputs: dict[str, Operand]
    params: dict[int, Operand]
    statics: dict[int, Operand]
    consts: dict[int, Operand]
    states: dict[str, Operand]              # state name -> its buffer
    fallbacks: Counter = field(default_factory=Counter)   # (op, "torch" | "host") -> count
    id_checks: dict[str, int] = field(default_factory=dict)  # input name -> exclusive bound (embedding ids)
    fused: Counter = field(default_factory=Counter)



def _literal(arr: np.ndarray):
    """A Python scalar when a constant can be inlined into generated code, else None."""
    a = np.asarray(arr)
    if a.size != 1 or a.dtype == np.bool_:
        return None
    v = a.reshape(-1)[0]
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        f = float(v)
        return f if np.isfinite(f) else None
    if a.dtype.kind in "iu":
        return int(v)
    return None


class Lowering:
    def __init__(self, plan: Plan, num_sms: int = 132, device_type: str = "cuda"):
        self.plan, self.types = plan, plan.types
        self.num_sms, self.device_type = num_sms, device_type
        self.storages: list[Storage] = []
        self.vals: dict[int, Operand] = {}
        self.launches: list[Launch] = []
        self.fallbacks: Counter = Counter()
        self.fused: Counter = Counter()
        self.id_checks: dict[str, int] = {}
        self.keep = set(plan.outputs.values()) | {vout for _, vout, _ in plan.states.values()}
        self.input_name = {vid: n for n, (vid, _) in plan.inputs.items()}
        self.producer, self.readers = {}, {}
        for i, s in enumerate(plan.steps):
            for v in flat_ids(s.inputs):
                self.readers.setdefault(v, []).append(i)
            for o in s.outputs:
                self.producer[o] = i
        self.inputs = {}
        for name, (vid, t) in plan.inputs.items():
            self.vals[vid] = self.inputs[name] = self._fresh("input", t.shape, t.dtype, vid)
        self.states = {}
        for name, (vid, _, t) in plan.states.items():
            self.vals[vid] = self.states[name] = self._fresh("state", t.shape, t.dtype, vid)
            self.vals[vid].storage.state = name
        self.params = {vid: self._fresh("param", t.shape, t.dtype, vid) for _, (vid, t) in plan.params.items()}
        self.vals.update(self.params)
        self.consts = {}
        for vid, arr in plan.constants.items():
            t = self.types[vid]
            self.consts[vid] = self.vals[vid] = self._fresh("const", t.shape, t.dtype, vid)
        self.statics = {}
        for s in plan.load_steps:
            for o in s.outputs:
                t = self.types[o]
                self.statics[o] = self.vals[o] = self._fresh("static", t.shape, t.dtype, o)
        self._arena_storage: dict[int, Storage] = {}   # plan storage owner -> arena Storage
        self._steps: tuple[int, ...] = ()                 # the Plan steps the launches emitted now compute

    # ---- storages and operands --------------------------------------------------------------
    def _storage(self, kind: str, dtype: torch.dtype, numel: int, vid: int | None = None) -> Storage:
        st = Storage(len(self.storages), kind, dtype, numel, vid)
        self.storages.append(st)
        return st

    def _fresh(self, kind: str, shape, dtype, vid: int | None = None) -> Operand:
        """A storage of its own (inputs, states, parameters, constants, scratch)."""
        tdt = torch_dtype(dtype) if not isinstance(dtype, torch.dtype) else dtype
        numel = math.prod(int(d) for d in shape)
        st = self._storage(kind, tdt, max(numel, 1), vid)
        base = torch.empty(max(numel, 1), dtype=tdt, device="meta")
        return Operand(st, base[:numel].view(tuple(shape)))

    def _out(self, vid: int) -> Operand:
        """The Plan's slot for value `vid`: an arena slot (stored permuted where the Plan's layouts
        say), or the state buffer it is computed into."""
        mem = self.plan.memory
        owner = mem.value_storage[vid]
        if vid in mem.slices:   # computed into its slice of a concat's output
            axis, start = mem.slices[vid]
            whole = self._out(owner)
            op = whole.derive(whole.meta.narrow(axis, start, self.types[vid].shape[axis]))
            self.vals[vid] = op
            return op
        pst = mem.storages[owner]
        t = self.types[vid]
        if pst.state is not None:
            op = self.vals[owner].derive(self.vals[owner].meta.view(tuple(t.shape)))
            self.vals[vid] = op
            return op
        st = self._arena_storage.get(owner)
        if st is None:
            st = self._arena_storage[owner] = self._storage("arena", torch_dtype(pst.dtype), max(t.size, 1), vid)
            st.offset, st.arena = pst.offset, pst.dtype
        base = torch.empty(st.numel, dtype=st.dtype, device="meta")[:t.size]
        perm = self.plan.layouts.get(vid)
        if perm is None:
            op = Operand(st, base.view(tuple(t.shape)))
        else:
            op = Operand(st, base.view([t.shape[p] for p in perm]).permute([perm.index(i) for i in range(t.rank)]))
            self.fused["transposed_output"] += 1
        self.vals[vid] = op
        return op

    def _contiguous(self, op: Operand) -> Operand:
        if op.meta.is_contiguous():
            return op
        dst = self._fresh("temp", tuple(op.meta.shape), kiln_dtype(op.meta.dtype))
        self._copy(op, dst, "contiguous")
        return dst

    def _copy(self, src: Operand, dst: Operand, label: str) -> None:
        dt = kiln_dtype(src.meta.dtype)
        e = PointwiseExpr()
        r = e.add_input(dt)
        y = e.add("identity", [r], {}, kiln_dtype(dst.meta.dtype))
        e.outputs = [y.index]
        k = PointwiseKernel(e, tuple(dst.meta.shape), [src.meta], [dst.meta])
        self._emit("layout", label, k, ([src], [dst]))

    def _emit(self, archetype: str, label: str, fn, args: tuple, graph_safe: bool = True) -> None:
        self.launches.append(Launch(archetype, label, fn, args, graph_safe, self._steps))

    def _scratch(self, specs) -> list[Operand]:
        """Workspaces of the next launch alone: every launch's scratch starts at offset 0 of one buffer."""
        ops = [self._fresh("scratch", shape, dt) for shape, dt in specs]
        for op in ops:
            op.storage.vid = len(self.launches)   # the launch that owns it
        return ops

    # ---- driver ------------------------------------------------------------------------------
    def lower(self) -> Program:
        steps, kernels = self.plan.steps, self.plan.kernels
        for i, s in enumerate(steps):
            if s.kind == "view":
                self._steps = (i,)
                if self._view(s):
                    continue
                self._fallback(s, scratch=True)   # a view no strides express (a negative step): a copy
                continue
            k = kernels[s.kernel]
            if i != k.last:
                continue            # a kernel launches once, at its last step
            self._steps = tuple(k.steps)
            if k.pattern == "rope_qkv_cache_attention":
                self._decode_qkv(k.steps)
            elif k.pattern == "multi_tensor":
                self._multi_tensor(k.parts)
            elif k.archetype == "pointwise":
                self._pointwise_group(k.steps)
            elif k.pattern == "matmul_cast":
                self._matmul(k.steps[0], steps[k.steps[0]], cast_out=s.outputs[0])
            elif k.pattern == "norm_backward_add":
                self._norm_backward_add(k.steps[0], i)
            elif k.pattern == "rope_pair":
                self._rope_pair(*k.steps)
            else:
                self._single(i, s)
        # assigned states not computed in place: copy into the state buffer at the end
        self._steps = ()
        for name, (_, vout, _) in self.plan.states.items():
            if self.plan.memory.state_in_place.get(name) != vout:
                self._copy(self.vals[vout], self.states[name], f"state {name}")
        outputs = {name: self.vals[vid] for name, vid in self.plan.outputs.items()}
        return Program(self.storages, self.launches, self.inputs, outputs, self.params, self.statics, self.consts,
                       self.states, self.fallbacks, self.id_checks, self.fused)

    def _single(self, i: int, s) -> None:
        if s.op in ("reshape", "transpose", "broadcast_to", "slice", "split") and self._copy_view(s):
            return
        handler = getattr(self, f"_op_{s.op}", None)
        if handler is not None:
            try:
                if handler(i, s) is not False:
                    return
            except NotImplementedError:
                pass
        self._fallback(s)

    # ---- views -------------------------------------------------------------------------------
    def _copy_view(self, s) -> bool:
        """A reshape the Plan gives a slot of its own (its input is not contiguous): copy into it."""
        if s.op != "reshape":
            return False
        x, out = self.vals[s.inputs[0]], self._out(s.outputs[0])
        self._copy(x, out.derive(out.meta.view(tuple(x.meta.shape))), "reshape")
        return True

    def _view(self, s) -> bool:
        x = self.vals[s.inputs[0]]
        m = x.meta
        a = s.attrs
        if s.op == "reshape":
            shape = tuple(self.types[s.outputs[0]].shape)
            try:
                self.vals[s.outputs[0]] = x.derive(m.view(shape))
            except RuntimeError:
                self.vals[s.outputs[0]] = (c := self._contiguous(x)).derive(c.meta.view(shape))
            return True
        if s.op == "transpose":
            self.vals[s.outputs[0]] = x.derive(m.permute([p % m.dim() for p in a["perm"]]))
            return True
        if s.op == "broadcast_to":
            shape = tuple(a["shape"])
            self.vals[s.outputs[0]] = x.derive(m.expand(shape))
            return True
        if s.op == "slice":
            steps = a["steps"] or [1] * len(a["axes"])
            if any(st < 0 for st in steps):
                return False
            idx = [slice(None)] * m.dim()
            for ax, st, en, sp in zip(a["axes"], a["starts"], a["ends"], steps):
                idx[ax % m.dim()] = slice(st, en, sp)
            self.vals[s.outputs[0]] = x.derive(m[tuple(idx)])
            return True
        if s.op == "split":
            axis = a["axis"] % m.dim()
            off = 0
            for o, size in zip(s.outputs, a["sizes"]):
                self.vals[o] = x.derive(m.narrow(axis, off, size))
                off += size
            return True
        return False

    # ---- pointwise ---------------------------------------------------------------------------
    def _pointwise_group(self, members: list[int], built=None) -> None:
        """One launch of a chain; `built`: its `_pointwise_expr` result when the caller has it."""
        e, ext, out_vids = built or self._pointwise_expr(members)
        outs = [self._out(o) for o in out_vids]
        shape = tuple(self.types[out_vids[-1]].shape)
        k = PointwiseKernel(e, shape, [o.meta for o in ext], [o.meta for o in outs])
        label = "+".join(self.plan.steps[m].op for m in members)
        if len(members) > 1:
            self.fused["pointwise_chain"] += 1
        self._emit("pointwise", label, k, (ext, outs))

    def _multi_tensor(self, parts: list[list[int]]) -> None:
        """The Plan's multi-tensor kernel: one launch over every chain's tensors, or a launch per
        chain where an operand is not contiguous (the launch indexes flat tensors)."""
        sets = [self._pointwise_expr(members) for members in parts]
        e = sets[0][0]
        ins = [ext for _, ext, _ in sets]
        outs = [[self._out(o) for o in out_vids] for _, _, out_vids in sets]
        flat = all(op.meta.is_contiguous() and op.meta.dtype != torch.bool for group in ins + outs for op in group)
        if not flat or any(s[0].key() != e.key() for s in sets):
            for members, built in zip(parts, sets):
                self._pointwise_group(members, built)
            return
        k = MultiTensorPointwise(e, [[op.meta for op in g] for g in ins], [[op.meta for op in g] for g in outs])
        self.fused["multi_tensor"] += 1
        label = "+".join(self.plan.steps[m].op for m in parts[0]) + f" [{len(parts)} tensors]"
        self._emit("pointwise", label, k, (ins, outs))

    def _pointwise_expr(self, members: list[int]):
        """The fused expression of a chain, its external operands, and the values it writes: the
        chain's value and its members' values that the Plan keeps or a later step reads."""
        steps = self.plan.steps
        out_vid = steps[members[-1]].outputs[0]
        e = PointwiseExpr()
        ext: list[Operand] = []
        refs: dict[int, Ref] = {}
        node_ref: dict[int, Ref] = {}
        for m in members:
            s = steps[m]
            args = []
            for v in s.inputs:
                if v in node_ref:
                    args.append(node_ref[v])
                    continue
                lit = _literal(self.plan.constants[v]) if v in self.plan.constants else None
                if lit is not None:
                    args.append(Ref("lit", value=lit))
                    continue
                if v not in refs:
                    refs[v] = e.add_input(self.types[v].dtype)
                    ext.append(self.vals[v])
                args.append(refs[v])
            node_ref[s.outputs[0]] = e.add(s.op, args, s.attrs, self.types[s.outputs[0]].dtype)
        inside = set(members)
        out_vids = [o for m in members for o in steps[m].outputs
                    if o == out_vid or o in self.keep or not set(self.readers.get(o, ())) <= inside]
        e.outputs = [node_ref[o].index for o in out_vids]
        return e, ext, out_vids

    def _decode_qkv(self, members) -> None:
        """The Plan's rope_qkv_cache_attention kernel: for one token per row, one decode attention
        launch that rotates q and k and writes k and v into the caches first; otherwise a launch
        that does rope(q), rope(k) into its cache and v into its cache, then the attention."""
        steps = self.plan.steps
        *prologue, t = members
        by_op = {}
        for m in prologue:
            by_op.setdefault(steps[m].op, []).append(steps[m])
        cw_k, cw_v = by_op["cache_write"]
        if self.producer.get(cw_k.inputs[1]) is None or steps[self.producer[cw_k.inputs[1]]].op != "rope":
            cw_k, cw_v = cw_v, cw_k
        rope_k = steps[self.producer[cw_k.inputs[1]]]
        rope_q = next(r for r in by_op["rope"] if r is not rope_k)
        xq, cos, sin = (self.vals[v] for v in rope_q.inputs)
        xk, xv = self.vals[rope_k.inputs[0]], self.vals[cw_v.inputs[1]]
        if cos.meta.stride() != sin.meta.stride():
            cos, sin = self._contiguous(cos), self._contiguous(sin)
        kc, vc = self._out(cw_k.outputs[0]), self._out(cw_v.outputs[0])
        if kc.storage is not self.vals[cw_k.inputs[0]].storage or vc.storage is not self.vals[cw_v.inputs[0]].storage:
            raise AssertionError("rope_qkv_cache kernel: the Plan must update both caches in place")
        interleaved = rope_q.attrs["layout"] == "interleaved"
        slot = self.vals[cw_k.inputs[2]]
        try:
            self._op_attention(t, steps[t], rope=(cos.meta.shape[2], interleaved), q=xq,
                               rope_args=(xk, xv, cos, sin, slot))
            return
        except NotImplementedError:   # not the one-token decode kernel: rotate and cache first
            pass
        q_out = self._out(rope_q.outputs[0])
        bq, hq, _, dd = xq.meta.shape
        _, hk, length, _ = kc.meta.shape
        k = layout_k.RopeQKVCache(bq, hq, hk, dd, cos.meta.shape[2], length, interleaved)
        self._emit("layout", "rope(q)+rope(k)+cache_write(k,v)", k, (xq, xk, xv, cos, sin, q_out, kc, vc, slot))
        self.fused["rope_qkv_cache"] += 1
        self._single(t, steps[t])

    def _op_cache_write(self, i, s):
        """Write the new rows; the cache is copied first unless the Plan computes the result in place."""
        cache, new, pos = (self.vals[v] for v in s.inputs)
        out = self._out(s.outputs[0])
        t = self.types[s.inputs[0]]
        axis = s.attrs["axis"] % t.rank
        if out.storage is not cache.storage:
            self._copy(cache, out, "cache_write (copy)")
        outer, inner = int(np.prod(t.shape[:axis])), int(np.prod(t.shape[axis + 1:]))
        n = self.types[s.inputs[1]].shape[axis]
        dst = out.derive(out.meta.view(outer, 1, t.shape[axis], inner))
        try:
            src = new.derive(new.meta.view(outer, 1, n, inner))
        except RuntimeError:
            c = self._contiguous(new)
            src = c.derive(c.meta.view(outer, 1, n, inner))
        k = layout_k.KVCacheWrite(tuple(dst.meta.shape), tuple(src.meta.shape), pos_per_batch=False)
        self._emit("layout", "cache_write", k, (dst, src, pos))

    # ---- reductions --------------------------------------------------------------------------
    def _op_softmax(self, i, s, log=False):
        x = self.vals[s.inputs[0]]
        t = self.types[s.inputs[0]]
        if s.attrs["axis"] % max(t.rank, 1) != t.rank - 1 or not t.dtype.is_float:
            return False
        x = self._contiguous(x)
        out = self._out(s.outputs[0])
        k = red_k.Softmax(x.meta, out.meta, log)
        self._emit("reduction", s.op, k, (x, out))

    def _op_log_softmax(self, i, s):
        return self._op_softmax(i, s, log=True)

    def _op_rms_norm(self, i, s):
        return self._norm(s, rms=True)

    def _op_layer_norm(self, i, s):
        return self._norm(s, rms=False)

    def _norm(self, s, rms: bool):
        x = self._contiguous(self.vals[s.inputs[0]])
        w = self.vals[s.inputs[1]] if s.inputs[1] is not None else None
        b = self.vals[s.inputs[2]] if not rms and s.inputs[2] is not None else None
        out = self._out(s.outputs[0])
        k = red_k.Norm(x.meta, rms=rms, eps=s.attrs["eps"], has_residual=False, has_weight=w is not None,
                       has_bias=b is not None, unit_offset=bool(s.attrs.get("add_unit_offset", False)))
        self._emit("reduction", s.op, k, (x, None, w, b, out))

    def _op_rms_norm_backward(self, i, s, add=None):
        """`add`: the Plan's add step after it (pattern norm_backward_add): dx plus its other
        input is stored as the add's output."""
        x, dy = (self._contiguous(self.vals[v]) for v in (s.inputs[0], s.inputs[2]))
        w = self.vals[s.inputs[1]] if s.inputs[1] is not None else None
        outs = [self._out(o) for o in s.outputs]
        res = None
        if add is not None:
            other = add.inputs[1] if add.inputs[0] == s.outputs[0] else add.inputs[0]
            res = self._contiguous(self.vals[other])
            outs[0] = self._out(add.outputs[0])
        if not outs[0].meta.is_contiguous():
            raise NotImplementedError("rms_norm_backward into a permuted slot")
        k = RmsNormBackward(x.meta, eps=s.attrs["eps"], has_weight=w is not None,
                            add_unit_offset=bool(s.attrs["add_unit_offset"]), weight_grad=bool(s.attrs["weight_grad"]),
                            has_residual=res is not None, num_sms=self.num_sms)
        dw = outs[1] if len(outs) > 1 else None
        partial = next(iter(self._scratch(k.scratch())), None)
        self._emit("reduction", s.op + ("+add" if res is not None else ""), k, (x, w, dy, outs[0], dw, partial, res))

    def _norm_backward_add(self, j: int, i: int) -> None:
        norm, add = self.plan.steps[j], self.plan.steps[i]
        try:
            self._op_rms_norm_backward(j, norm, add)
        except NotImplementedError:   # rows too long for one block: the norm's fallback, then the add
            self._steps = (j,)
            self._single(j, norm)
            self._steps = (i,)
            self._pointwise_group([i])

    def _reduce(self, s, op):
        t = self.types[s.inputs[0]]
        if op == "argmax":
            axes = [s.attrs["axis"] % t.rank]
        else:
            axes = sorted({a % t.rank for a in ([s.attrs["axes"]] if isinstance(s.attrs["axes"], int)
                                                  else (s.attrs["axes"] if s.attrs["axes"] is not None
                                                        else range(t.rank)))})
        if not axes or axes != list(range(axes[0], axes[-1] + 1)):
            return False
        if not t.dtype.is_float and op != "sum":
            return False
        x = self._contiguous(self.vals[s.inputs[0]])
        outer = int(np.prod(t.shape[:axes[0]]))
        R = int(np.prod([t.shape[a] for a in axes]))
        inner = int(np.prod(t.shape[axes[-1] + 1:]))
        out = self._out(s.outputs[0])
        k = red_k.Reduce(op, outer, R, inner, x.meta.dtype, self.num_sms)
        split = f" [{k.chunks} chunks]" if k.chunks > 1 else f" [{k.splits} splits]" if k.splits > 1 else ""
        self._emit("reduction", op + split, k,
                   (x, out, *self._scratch(k.scratch())))

    def _op_sum_squares(self, i, s):
        xs = [self._contiguous(self.vals[v]) for v in s.inputs[0]]
        out = self._out(s.outputs[0])
        k = SumSquares([x.meta for x in xs])
        self._emit("reduction", f"sum_squares [{len(xs)} tensors]", k, (xs, out, *self._scratch(k.scratch())))

    def _op_sum(self, i, s):
        return self._reduce(s, "sum")

    def _op_mean(self, i, s):
        return self._reduce(s, "mean")

    def _op_max(self, i, s):
        return self._reduce(s, "max")

    def _op_min(self, i, s):
        return self._reduce(s, "min")

    def _op_argmax(self, i, s):
        return self._reduce(s, "argmax")

    # ---- softmax cross-entropy ---------------------------------------------------------------
    def _xent_logits(self, vid: int):
        """The logits operand and its row layout (a copy when its rows are not two-level strided)."""
        x = self.vals[vid]
        layout = xent_k.row_layout(x.meta)
        if layout is None:
            x = self._contiguous(x)
            layout = xent_k.row_layout(x.meta)
        return x, layout

    def _xent_rows(self, vid: int | None):
        """A per-row operand as a flat [rows] view (a copy where no single stride walks it)."""
        if vid is None:
            return None
        op = self.vals[vid]
        try:
            return op.derive(op.meta.view(-1))
        except RuntimeError:
            c = self._contiguous(op)
            return c.derive(c.meta.view(-1))

    def _op_softmax_cross_entropy(self, i, s):
        x, layout = self._xent_logits(s.inputs[0])
        labels = self._xent_rows(s.inputs[1])
        loss, lse = (self._out(o) for o in s.outputs)
        k = xent_k.SoftmaxCrossEntropy(x.meta, layout, labels.meta, **s.attrs)
        self._emit("reduction", s.op, k, (x, labels, loss.derive(loss.meta.view(-1)), lse.derive(lse.meta.view(-1))))

    def _op_softmax_cross_entropy_backward(self, i, s):
        x, layout = self._xent_logits(s.inputs[0])
        labels, lse, dloss, dlse = (self._xent_rows(v) for v in s.inputs[1:])
        dx = self._out(s.outputs[0])
        if not dx.meta.is_contiguous():
            raise NotImplementedError("softmax_cross_entropy_backward into a permuted slot")
        k = xent_k.SoftmaxCrossEntropyBackward(x.meta, layout, labels.meta, lse.meta, dloss.meta,
                                               dlse.meta if dlse is not None else None, **s.attrs)
        self._emit("reduction", s.op, k, (x, labels, lse, dloss, dlse, dx))

    # ---- matmul ------------------------------------------------------------------------------
    def _op_linear(self, i, s):
        return self._matmul(i, s)

    def _op_fused_linear(self, i, s):
        return self._matmul(i, s)

    def _op_matmul(self, i, s):
        return self._matmul(i, s)

    def _matmul(self, i, s, cast_out: int | None = None):
        """A matmul launch: the fused_linear's norm prologue, bias/activation/residual epilogue, and
        (the Plan's matmul_cast kernel) a cast of the half-precision result to float32."""
        out_vid = s.outputs[0] if cast_out is None else cast_out
        norm, eps, unit, nw, nb = "none", 1e-5, False, None, None
        bias = residual = None
        activation = "none"
        if s.op == "matmul":
            a, b = self.vals[s.inputs[0]].meta, self.vals[s.inputs[1]].meta
            aop, bop = self.vals[s.inputs[0]], self.vals[s.inputs[1]]
            if s.attrs["transpose_a"]:
                a = a.transpose(-1, -2)
            if s.attrs["transpose_b"]:
                b = b.transpose(-1, -2)
            mid_t = self.types[s.outputs[0]]
            M, N = mid_t.shape[-2], mid_t.shape[-1]
            K = a.shape[-1]
            batch = tuple(mid_t.shape[:-2])
            a = a.expand(batch + (M, K))
            b = b.expand(batch + (K, N))
        else:
            x = self.vals[s.inputs[0]]
            if s.op == "fused_linear":
                at = s.attrs
                norm = at["norm"] if at["norm"] != "none" else norm
                if at["norm"] != "none":
                    eps, unit = at["eps"], bool(at["add_unit_offset"])
                    nw = self.vals[s.inputs[4]] if s.inputs[4] is not None else None
                    nb = self.vals[s.inputs[5]] if s.inputs[5] is not None else None
                    if nw is None:
                        raise NotImplementedError("fused_linear norm without weight")
                activation = at["activation"]
                residual = s.inputs[3]
            bias = self.vals[s.inputs[2]] if s.inputs[2] is not None else None
            K = x.meta.shape[-1]
            try:
                a2 = x.meta.view(-1, K)
            except RuntimeError:
                x = self._contiguous(x)
                a2 = x.meta.view(-1, K)
            M = a2.shape[0]
            w = self.vals[s.inputs[1]].meta
            N = w.shape[0]
            a, b, aop, bop, batch = a2.unsqueeze(0), w.t().unsqueeze(0), x, self.vals[s.inputs[1]], (1,)
        out_t = self.types[out_vid]
        n_out = out_t.shape[-1]
        if s.op == "matmul":
            # at most two batch dims: collapse the broadcast batch dims of a, b and c together
            from .kernels.pointwise import collapse
            c_full = torch.empty(out_t.shape, dtype=torch_dtype(out_t.dtype), device="meta")
            if batch:
                shp, (sa, sb, _) = collapse(batch, [a.stride()[:-2], b.stride()[:-2], c_full.stride()[:-2]])
                if len(shp) > 2:
                    raise NotImplementedError("matmul batch dims that do not collapse to two")
                shp, sa, sb = (1,) * (2 - len(shp)) + shp, (0,) * (2 - len(sa)) + sa, (0,) * (2 - len(sb)) + sb
            else:
                shp, sa, sb = (1, 1), (0, 0), (0, 0)
            a = a.as_strided(shp + (M, K), sa + (a.stride(-2), a.stride(-1)), a.storage_offset())
            b = b.as_strided(shp + (K, N), sb + (b.stride(-2), b.stride(-1)), b.storage_offset())
            batch = shp
        else:
            batch = (1, 1)
            a, b = a.unsqueeze(0), b.unsqueeze(0)
        bt = batch[0] * batch[1]
        out = self._out(out_vid)
        c = out.meta.view(batch + (M, n_out))
        r3 = None
        rop = None
        if residual is not None:
            rop = self.vals[residual]
            re = rop.meta.expand(out_t.shape)
            try:
                r3 = re.view(batch + (M, n_out))
            except RuntimeError:
                rop = self._contiguous(rop.derive(re))
                r3 = rop.meta.view(batch + (M, n_out))
        dtype = a.dtype
        impl = mm_k.choose_impl(M, n_out, K, torch.device(self.device_type if not interpreting() else "cpu"), batch=bt)
        if activation in mm_k.GATED and bias is not None:
            raise NotImplementedError("gated activation with bias")
        if impl == "cublas" and batch[0] > 1:
            impl = "triton"   # torch.matmul(out=) takes one batch dim of views
        if impl == "cublas":
            a, b, c = a[0], b[0], c[0]
            r3 = r3[0] if r3 is not None else None
            k = mm_k.CublasMatmul(M, n_out, K, bt, dtype, c_meta=c, residual_meta=r3, norm=norm, eps=eps,
                                  unit_offset=unit, has_bias=bias is not None, activation=activation,
                                  round_out=cast_out is not None, has_norm_bias=nb is not None)
            scratch = self._scratch(k.scratch())
        elif impl == "gemv":
            k = Gemv(M, n_out, K, dtype, norm=norm, eps=eps, unit_offset=unit, has_bias=bias is not None,
                     activation=activation, has_residual=residual is not None, round_out=cast_out is not None,
                     has_norm_bias=nb is not None,
                     early_launch=programmatic_launch() and bop.storage.kind in ("param", "static", "const"),
                     num_sms=self.num_sms)
            scratch = None
        else:
            k = mm_k.Matmul(M, n_out, K, bt, dtype, norm=norm, eps=eps, unit_offset=unit,
                            has_bias=bias is not None, activation=activation, has_residual=residual is not None,
                            round_out=cast_out is not None, has_norm_bias=nb is not None)
            scratch = None
        args = [aop.derive(a), bop.derive(b), out.derive(c), bias, rop.derive(r3) if rop is not None else None, nw, nb]
        if scratch is not None:
            args.append(scratch)
        label = s.op + ("+cast" if cast_out is not None else "")
        self._emit("matmul", f"{label} [{impl}]", k, tuple(args))

    # ---- attention ---------------------------------------------------------------------------
    def _mask_kind(self, vid: int | None) -> str:
        return "none" if vid is None else ("bool" if self.types[vid].dtype.name == "bool" else "add")

    def _op_attention(self, i, s, rope=None, q=None, rope_args=None):
        """From _decode_qkv: rope (rot_half, interleaved), the unrotated q and the rope launch's
        other inputs (k, v, cos, sin, slot)."""
        lse = s.op == "attention_lse"
        q = self.vals[s.inputs[0]] if q is None else q
        k, v = (self.vals[x] for x in s.inputs[1:3])
        mask = self.vals[s.inputs[3]] if s.inputs[3] is not None else None
        a = s.attrs
        att = attn_k.Attention(tuple(q.meta.shape), tuple(k.meta.shape), tuple(v.meta.shape), q.meta.dtype,
                               causal=a["causal"], scale=a["scale"], window=a["window"], softcap=a["softcap"],
                               mask_kind=self._mask_kind(s.inputs[3]), write_lse=lse, num_sms=self.num_sms,
                               rope=rope)
        out = self._out(s.outputs[0])
        lse_op = self._out(s.outputs[1]) if lse else None
        scratch = self._scratch(att.scratch())
        prologue = "rope(q)+rope(k)+cache_write(k,v)+" if rope is not None else ""
        self._emit("attention", prologue + s.op + (" [decode]" if att.decode else ""), att,
                   (q, k, v, mask, out, lse_op, scratch) + ((rope_args,) if rope is not None else ()))
        if rope is not None:
            self.fused["rope_qkv_cache_attention"] += 1

    def _op_attention_lse(self, i, s):
        return self._op_attention(i, s)

    def _op_attention_backward(self, i, s):
        """The flash backward (dq, dk, dv); the gradient of the scores (mask_grad) stays a fallback, and so
        does whatever `AttentionBackward` declines (NotImplementedError: a value head dim unlike q's, ...)."""
        a = s.attrs
        if a["mask_grad"]:
            return False
        q, k, v, mask, out, lse, dout, dlse = (self.vals[x] if x is not None else None for x in s.inputs)
        kern = attn_bwd_k.AttentionBackward(
            tuple(q.meta.shape), tuple(k.meta.shape), tuple(v.meta.shape), q.meta.dtype, causal=a["causal"],
            scale=a["scale"], window=a["window"], softcap=a["softcap"], mask_kind=self._mask_kind(s.inputs[3]),
            mask_per_key=attn_bwd_k.per_key_mask(mask.meta if mask is not None else None,
                                                 (*q.meta.shape[:3], k.meta.shape[2])),
            has_dlse=dlse is not None)
        dq, dk, dv = (self._out(o) for o in s.outputs)
        scratch = self._scratch(kern.scratch())
        self._emit("attention", s.op, kern, (q, k, v, mask, out, lse, dout, dlse, dq, dk, dv, scratch))

    # ---- layout / gather ---------------------------------------------------------------------
    def _op_rope(self, i, s):
        x, cos, sin = (self.vals[v] for v in s.inputs)
        if cos.meta.stride() != sin.meta.stride():
            cos, sin = self._contiguous(cos), self._contiguous(sin)
        out = self._out(s.outputs[0])
        k = layout_k.Rope(tuple(x.meta.shape), cos.meta.shape[2], s.attrs["layout"] == "interleaved")
        self._emit("layout", "rope", k, (x, cos, sin, out))

    def _rope_pair(self, a: int, b: int) -> None:
        """The Plan's rope_pair kernel: both ropes in one launch (two launches where they differ
        in shape beyond their heads)."""
        ra, rb = self.plan.steps[a], self.plan.steps[b]
        cos, sin = (self.vals[v] for v in ra.inputs[1:])
        if cos.meta.stride() != sin.meta.stride():
            cos, sin = self._contiguous(cos), self._contiguous(sin)
        xa, xb = self.vals[ra.inputs[0]], self.vals[rb.inputs[0]]
        oa, ob = self._out(ra.outputs[0]), self._out(rb.outputs[0])
        interleaved = ra.attrs["layout"] == "interleaved"
        ka, kb = (layout_k.Rope(tuple(x.meta.shape), cos.meta.shape[2], interleaved) for x in (xa, xb))
        try:
            k = layout_k.RopePair(ka, kb)
        except ValueError:
            self._emit("layout", "rope", ka, (xa, cos, sin, oa))
            self._emit("layout", "rope", kb, (xb, cos, sin, ob))
            return
        self._emit("layout", "rope [2 tensors]", k, (xa, oa, xb, ob, cos, sin))

    def _op_embedding(self, i, s):
        ids, w = self.vals[s.inputs[0]], self.vals[s.inputs[1]]
        if w.meta.stride(1) != 1:
            w = self._contiguous(w)
        ids = self._contiguous(ids)
        vocab = self.types[s.inputs[1]].shape[0]
        if s.inputs[0] in self.input_name:
            self.id_checks[self.input_name[s.inputs[0]]] = vocab
        out = self._out(s.outputs[0])
        k = layout_k.Embedding(ids.meta.numel(), vocab, w.meta.shape[1])
        self._emit("layout", "embedding", k, (ids, w, out))

    def _op_concat(self, i, s):
        out = self._out(s.outputs[0])
        axis = s.attrs["axis"] % out.meta.dim()
        off = 0
        for v in s.inputs[0]:
            x = self.vals[v]
            n = x.meta.shape[axis]
            if v not in self.plan.memory.slices:   # the others were computed into their slices
                self._copy(x, out.derive(out.meta.narrow(axis, off, n)), "concat")
            off += n

    def _op_repeat_interleave(self, i, s):
        x = self.vals[s.inputs[0]]
        axis, r = s.attrs["axis"] % x.meta.dim(), s.attrs["repeats"]
        out = self._out(s.outputs[0])
        shape = list(x.meta.shape)
        src = x.meta.unsqueeze(axis + 1).expand(shape[:axis + 1] + [r] + shape[axis + 1:])
        dst = out.meta.view(shape[:axis + 1] + [r] + shape[axis + 1:])
        self._copy(x.derive(src), out.derive(dst), "repeat_interleave")

    # ---- fallbacks ---------------------------------------------------------------------------
    def _fallback(self, s, scratch: bool = False) -> None:
        """The reference semantics through torch (or the host); scratch: outputs get storages of their
        own (a view step's outputs have no Plan slot)."""
        def operand(v):
            if isinstance(v, list):
                return [self.vals[x] for x in v]
            return self.vals[v] if v is not None else None

        ins = [operand(v) for v in s.inputs]
        if scratch:
            outs = [self._fresh("scratch", self.types[o].shape, self.types[o].dtype) for o in s.outputs]
            self.vals.update(zip(s.outputs, outs))
        else:
            outs = [self._out(o) for o in s.outputs]
        if s.op in TORCH_FALLBACKS:
            self.fallbacks[(s.op, "torch")] += 1
            self._emit("fallback", f"{s.op} [torch]", TorchLaunch(s.op, s.attrs), (ins, outs))
        else:
            self.fallbacks[(s.op, "host")] += 1
            self._emit("fallback", f"{s.op} [host]", HostLaunch(s.op, s.attrs), (ins, outs), graph_safe=False)


def lower(plan: Plan, num_sms: int = 132, device_type: str = "cuda") -> Program:
    return Lowering(plan, num_sms, device_type).lower()
