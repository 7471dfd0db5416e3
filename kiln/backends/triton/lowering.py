"""Lowering: a Plan's steps -> a list of launches over planned storages.

Every tensor is first a *meta* tensor (shape, strides, no memory): views (reshape,
transpose, slice, split, broadcast) are strided meta views of their base, so they cost no
launch, and each kernel is specialized for the exact strides it will see. Storages are the
allocations behind them: the activation arena (planned by liveness over the launches, see
`plan_arena`), inputs, persistent state (a KV cache updated in place), parameters, values
computed from parameters at load time ("static"), constants and per-launch scratch.
The executor later maps each meta view onto real memory with the same strides.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from kiln.compile.plan import Plan
from kiln.compile.step_inputs import flat_ids

from .device import interpreting, kiln_dtype, torch_dtype
from .fallback import TORCH_FALLBACKS, HostLaunch, TorchLaunch
from .fusion import MatmulFusion, plan_fusions
from .kernels import attention as attn_k
from .kernels import layout as layout_k
from .kernels import matmul as mm_k
from .kernels import reduction as red_k
from .kernels.pointwise import PointwiseExpr, PointwiseKernel, Ref

ALIGN = 256


@dataclass(eq=False)
class Storage:
    index: int
    kind: str                 # arena | input | state | param | static | const | scratch
    dtype: torch.dtype
    numel: int
    vid: int | None = None
    first: int = 1 << 60
    last: int = -1
    offset: int = -1

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


@dataclass
class Program:
    storages: list[Storage]
    launches: list[Launch]
    inputs: dict[str, Operand]
    outputs: dict[str, Operand]
    params: dict[int, Operand]
    statics: dict[int, Operand]
    consts: dict[int, Operand]
    state: dict[str, str]                   # output name -> input name updated in place
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
    def __init__(self, plan: Plan, state: dict[str, str] | None = None, num_sms: int = 132,
                 device_type: str = "cuda"):
        self.plan, self.types = plan, plan.types
        self.num_sms, self.device_type = num_sms, device_type
        self.storages: list[Storage] = []
        self.vals: dict[int, Operand] = {}
        self.launches: list[Launch] = []
        self.fallbacks: Counter = Counter()
        self.fused: Counter = Counter()
        self.id_checks: dict[str, int] = {}
        self.keep = set(plan.outputs.values())
        self.input_name = {vid: n for n, (vid, _) in plan.inputs.items()}
        self.producer, self.readers = {}, {}
        for i, s in enumerate(plan.steps):
            for v in flat_ids(s.inputs):
                self.readers.setdefault(v, []).append(i)
            for o in s.outputs:
                self.producer[o] = i
        self.state = dict(state or {})
        for out, inp in self.state.items():
            if out not in plan.outputs or inp not in plan.inputs:
                raise ValueError(f"state pair {out!r} <- {inp!r}: expected an output and an input of the plan")
            if self.types[plan.outputs[out]] != plan.inputs[inp][1]:
                raise ValueError(f"state pair {out!r} <- {inp!r}: types differ "
                                 f"({self.types[plan.outputs[out]]} vs {plan.inputs[inp][1]})")
        state_inputs = set(self.state.values())
        self.state_out = {plan.outputs[o]: plan.inputs[i][0] for o, i in self.state.items()}
        self.inputs = {}
        for name, (vid, t) in plan.inputs.items():
            self.vals[vid] = self._fresh("state" if name in state_inputs else "input", t.shape, t.dtype, vid)
            self.inputs[name] = self.vals[vid]
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
        self.fusion = plan_fusions(plan, self.keep)

    # ---- storages and operands --------------------------------------------------------------
    def _fresh(self, kind: str, shape, dtype, vid: int | None = None) -> Operand:
        tdt = torch_dtype(dtype) if not isinstance(dtype, torch.dtype) else dtype
        numel = int(np.prod(shape)) if len(shape) else 1
        st = Storage(len(self.storages), kind, tdt, max(numel, 1), vid)
        self.storages.append(st)
        base = torch.empty(max(numel, 1), dtype=tdt, device="meta")
        return Operand(st, base[:numel].view(tuple(shape)))

    def _out(self, vid: int, strided_ok: bool = False) -> Operand:
        """A fresh arena slot for value `vid` (or the state buffer it updates in place)."""
        t = self.types[vid]
        rd = self.readers.get(vid, [])
        if strided_ok and vid not in self.keep and len(rd) == 1 and self.plan.steps[rd[0]].op == "transpose":
            perm = self.plan.steps[rd[0]].attrs["perm"]
            perm = [p % t.rank for p in perm]
            inv = [perm.index(i) for i in range(t.rank)]
            op = self._fresh("arena", [t.shape[p] for p in perm], t.dtype)
            op = op.derive(op.meta.permute(inv))
            self.fused["transposed_output"] += 1
        else:
            op = self._fresh("arena", t.shape, t.dtype)
        self.vals[vid] = op
        return op

    def _contiguous(self, op: Operand) -> Operand:
        if op.meta.is_contiguous():
            return op
        dst = self._fresh("arena", tuple(op.meta.shape), kiln_dtype(op.meta.dtype))
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
        self.launches.append(Launch(archetype, label, fn, args, graph_safe))

    def _scratch(self, specs) -> list[Operand]:
        return [self._fresh("scratch", shape, dt) for shape, dt in specs]

    # ---- driver ------------------------------------------------------------------------------
    def lower(self) -> Program:
        steps = self.plan.steps
        decode_qkv = self._plan_decode_qkv()
        for i, s in enumerate(steps):
            if i in decode_qkv:
                self._decode_qkv(decode_qkv[i])
                continue
            if i in self.fusion.absorbed:
                continue
            if i in self.fusion.groups:
                self._pointwise_group(i, self.fusion.groups[i])
                continue
            if s.kind == "view" or s.op in ("reshape", "transpose", "broadcast_to", "slice", "split"):
                if self._view(s):
                    continue
            handler = getattr(self, f"_op_{s.op}", None)
            if handler is not None:
                try:
                    if handler(i, s) is not False:
                        continue
                except NotImplementedError:
                    pass
            self._fallback(s)
        # state outputs not produced in place: copy into the state buffer at the end
        outputs = {}
        for name, vid in self.plan.outputs.items():
            op = self.vals[vid]
            if name in self.state:
                dst = self.inputs[self.state[name]]
                if op.storage is not dst.storage:
                    self._copy(op, dst, f"state {name}")
                op = dst
            outputs[name] = op
        return Program(self.storages, self.launches, self.inputs, outputs, self.params, self.statics, self.consts,
                       self.state, self.fallbacks, self.id_checks, self.fused)

    # ---- views -------------------------------------------------------------------------------
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
    def _pointwise_group(self, last: int, members: list[int]) -> None:
        steps = self.plan.steps
        out_vid = steps[last].outputs[0]
        if len(members) == 1 and self._kv_write(steps[last]):
            return
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
        e.outputs = [node_ref[out_vid].index]
        state_in = self.state_out.get(out_vid)
        if state_in is not None and self._in_place_ok(state_in, members, ext, out_vid):
            out = self.vals[state_in]
            self.vals[out_vid] = out
            self.fused["state_in_place"] += 1
        else:
            out = self._out(out_vid, strided_ok=True)
        shape = tuple(self.types[out_vid].shape)
        k = PointwiseKernel(e, shape, [o.meta for o in ext], [out.meta])
        label = "+".join(steps[m].op for m in members)
        if len(members) > 1:
            self.fused["pointwise_chain"] += 1
        self._emit("pointwise", label, k, (ext, [out]))

    def _in_place_ok(self, state_in: int, members: list[int], ext: list[Operand], out_vid: int) -> bool:
        """An elementwise chain may overwrite the state it reads when nothing else reads that state."""
        readers = set(self.readers.get(state_in, []))
        st = self.vals[state_in]
        return readers <= set(members) and st.meta.is_contiguous() and \
            tuple(st.meta.shape) == tuple(self.types[out_vid].shape)

    def _kv_match(self, s):
        """(cache value, new value, slot value) when step `s` is where(slot == arange(L) [1,1,L,1],
        new [B,H,1,D], past) into a state updated in place, else None."""
        if s.op != "where":
            return None
        out_vid = s.outputs[0]
        state_in = self.state_out.get(out_vid)
        cond, new, past = s.inputs
        if state_in is None or past != state_in or set(self.readers.get(past, [])) != {self.producer[out_vid]}:
            return None
        ct, nt, pt = self.types[cond], self.types[new], self.types[past]
        if pt.rank != 4 or nt.shape != (pt.shape[0], pt.shape[1], 1, pt.shape[3]) \
                or ct.shape != (1, 1, pt.shape[2], 1):
            return None
        slot = self._slot_of(cond, pt.shape[2])
        if slot is None or not self.vals[past].meta.is_contiguous():
            return None
        return past, new, slot

    def _kv_write(self, s) -> bool:
        """The KV-cache pattern above: write only the new row instead of rewriting the cache."""
        m = self._kv_match(s)
        if m is None:
            return False
        past, new, slot = m
        pt, nt = self.types[past], self.types[new]
        cache = self.vals[past]
        k = layout_k.KVCacheWrite(tuple(pt.shape), tuple(nt.shape), pos_per_batch=False)
        self._emit("layout", "kv_cache_write", k, (cache, self.vals[new], self.vals[slot]))
        self.vals[s.outputs[0]] = cache
        self.fused["kv_cache_write"] += 1
        return True

    def _plan_decode_qkv(self) -> dict:
        """attention(rope(q), where(slot, rope(k), past_k), where(slot, v, past_v)) of a decode step:
        one launch rotates q, rotates k into the cache and copies v into the cache."""
        steps, fusion, found = self.plan.steps, self.fusion, {}
        for t, s in enumerate(steps):
            if s.op not in ("attention", "attention_lse"):
                continue
            a, c, d = (self.producer.get(v) for v in s.inputs[:3])
            if None in (a, c, d) or steps[a].op != "rope" or steps[c].op != "where" or steps[d].op != "where":
                continue
            if steps[c].inputs[0] != steps[d].inputs[0] or fusion.groups.get(c) != [c] \
                    or fusion.groups.get(d) != [d] or a in fusion.absorbed:
                continue
            b = self.producer.get(steps[c].inputs[1])
            if b is None or steps[b].op != "rope" or b in fusion.absorbed:
                continue
            qa, kb = steps[a], steps[b]
            if qa.inputs[1:] != kb.inputs[1:] or qa.attrs != kb.attrs \
                    or self.readers.get(qa.outputs[0]) != [t] or self.readers.get(kb.outputs[0]) != [c] \
                    or qa.outputs[0] in self.keep or kb.outputs[0] in self.keep:
                continue
            # the state inputs exist already, so the where steps can be matched now
            mc, md = self._kv_match(steps[c]), self._kv_match(steps[d])
            if mc is None or md is None or mc[2] != md[2]:
                continue
            members = (a, b, c, d)
            last = max(members)
            found[last] = members
            for m in members:
                fusion.groups.pop(m, None)
                if m != last:
                    fusion.absorbed.add(m)
        return found

    def _decode_qkv(self, members) -> None:
        a, b, c, d = (self.plan.steps[m] for m in members)
        past_k, _, slot = self._kv_match(c)
        past_v, v_new, _ = self._kv_match(d)
        xq, cos, sin = (self.vals[v] for v in a.inputs)
        xk = self.vals[b.inputs[0]]
        xv = self.vals[v_new]
        if cos.meta.stride() != sin.meta.stride():
            cos, sin = self._contiguous(cos), self._contiguous(sin)
        q_out = self._out(a.outputs[0])
        kc, vc = self.vals[past_k], self.vals[past_v]
        bq, hq, _, dd = xq.meta.shape
        _, hk, length, _ = kc.meta.shape
        k = layout_k.RopeQKVCache(bq, hq, hk, dd, cos.meta.shape[2], length, a.attrs["layout"] == "interleaved")
        self._emit("layout", "rope(q)+rope(k)+kv_cache_write(k,v)", k,
                   (xq, xk, xv, cos, sin, q_out, kc, vc, self.vals[slot]))
        self.vals[c.outputs[0]], self.vals[d.outputs[0]] = kc, vc
        self.fused["rope_qkv_cache"] += 1

    def _slot_of(self, cond: int, length: int) -> int | None:
        """The slot value s when `cond` is reshape(equal(arange(length), s)) with s of shape (1,)."""
        p = self.producer.get(cond)
        steps = self.plan.steps
        while p is not None and steps[p].op == "reshape":
            cond = steps[p].inputs[0]
            p = self.producer.get(cond)
        if p is None or steps[p].op != "equal":
            return None
        a, b = steps[p].inputs
        for c, s in ((a, b), (b, a)):
            arr = self.plan.constants.get(c)
            if arr is not None and arr.shape == (length,) and np.array_equal(arr, np.arange(length)) \
                    and self.types[s].shape == (1,) and self.types[s].dtype.is_int:
                return s
        return None

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
        self._emit("reduction", op, red_k.Reduce(op, outer, R, inner, x.meta.dtype), (x, out))

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

    # ---- matmul ------------------------------------------------------------------------------
    def _op_linear(self, i, s):
        return self._matmul(i, s)

    def _op_fused_linear(self, i, s):
        return self._matmul(i, s)

    def _op_matmul(self, i, s):
        return self._matmul(i, s)

    def _matmul(self, i, s):
        f = self.fusion.matmul.get(i) or MatmulFusion(out=s.outputs[0])
        steps = self.plan.steps
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
            if f.norm_step is None:
                x = self.vals[s.inputs[0]]
            else:
                ns = steps[f.norm_step]
                x = self.vals[ns.inputs[0]]
                norm, eps = ns.op, ns.attrs["eps"]
                unit = bool(ns.attrs.get("add_unit_offset", False))
                nw = self.vals[ns.inputs[1]] if ns.inputs[1] is not None else None
                nb = self.vals[ns.inputs[2]] if ns.op == "layer_norm" and ns.inputs[2] is not None else None
                if nw is None:
                    raise NotImplementedError("norm prologue without weight")
                self.fused["norm_prologue"] += 1
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
        if f.activation != "none":
            activation = f.activation
            self.fused["matmul_activation"] += 1
        if f.residual is not None:
            residual = f.residual
            self.fused["matmul_residual"] += 1
        out_t = self.types[f.out]
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
        out = self._out(f.out)
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
        impl = mm_k.choose_impl(M, n_out, K, torch.device(self.device_type if not interpreting() else "cpu"))
        if activation in mm_k.GATED and bias is not None:
            raise NotImplementedError("gated activation with bias")
        if impl == "cublas" and batch[0] > 1:
            impl = "triton"   # torch.matmul(out=) takes one batch dim of views
        if impl == "cublas":
            a, b, c = a[0], b[0], c[0]
            r3 = r3[0] if r3 is not None else None
            k = mm_k.CublasMatmul(M, n_out, K, bt, dtype, c_meta=c, residual_meta=r3, norm=norm, eps=eps,
                                  unit_offset=unit, has_bias=bias is not None, activation=activation,
                                  round_out=f.round_to_input, has_norm_bias=nb is not None)
            scratch = self._scratch(k.scratch())
        else:
            k = mm_k.Matmul(M, n_out, K, bt, dtype, norm=norm, eps=eps, unit_offset=unit,
                            has_bias=bias is not None, activation=activation, has_residual=residual is not None,
                            round_out=f.round_to_input, has_norm_bias=nb is not None)
            scratch = None
        args = [aop.derive(a), bop.derive(b), out.derive(c), bias, rop.derive(r3) if rop is not None else None, nw, nb]
        if scratch is not None:
            args.append(scratch)
        label = "+".join(([steps[f.norm_step].op] if f.norm_step is not None else []) + [s.op]
                         + [steps[j].op for j in f.absorbed if j != f.norm_step])
        self._emit("matmul", f"{label} [{impl}]", k, tuple(args))

    # ---- attention ---------------------------------------------------------------------------
    def _op_attention(self, i, s, lse=False):
        q, k, v = (self.vals[x] for x in s.inputs[:3])
        mask = self.vals[s.inputs[3]] if s.inputs[3] is not None else None
        kind = "none" if mask is None else ("bool" if self.types[s.inputs[3]].dtype.name == "bool" else "add")
        a = s.attrs
        att = attn_k.Attention(tuple(q.meta.shape), tuple(k.meta.shape), tuple(v.meta.shape), q.meta.dtype,
                               causal=a["causal"], scale=a["scale"], window=a["window"], softcap=a["softcap"],
                               mask_kind=kind, write_lse=lse, num_sms=self.num_sms)
        out = self._out(s.outputs[0], strided_ok=True)
        lse_op = self._out(s.outputs[1]) if lse else None
        scratch = self._scratch(att.scratch())
        self._emit("attention", s.op + (" [decode]" if att.decode else ""), att,
                   (q, k, v, mask, out, lse_op, scratch))

    def _op_attention_lse(self, i, s):
        return self._op_attention(i, s, lse=True)

    # ---- layout / gather ---------------------------------------------------------------------
    def _op_rope(self, i, s):
        x, cos, sin = (self.vals[v] for v in s.inputs)
        if cos.meta.stride() != sin.meta.stride():
            cos, sin = self._contiguous(cos), self._contiguous(sin)
        out = self._out(s.outputs[0], strided_ok=True)
        k = layout_k.Rope(tuple(x.meta.shape), cos.meta.shape[2], s.attrs["layout"] == "interleaved")
        self._emit("layout", "rope", k, (x, cos, sin, out))

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
    def _fallback(self, s) -> None:
        def operand(v):
            if isinstance(v, list):
                return [self.vals[x] for x in v]
            return self.vals[v] if v is not None else None

        ins = [operand(v) for v in s.inputs]
        outs = [self._out(o) for o in s.outputs]
        if s.op in TORCH_FALLBACKS:
            self.fallbacks[(s.op, "torch")] += 1
            self._emit("fallback", f"{s.op} [torch]", TorchLaunch(s.op, s.attrs), (ins, outs))
        else:
            self.fallbacks[(s.op, "host")] += 1
            self._emit("fallback", f"{s.op} [host]", HostLaunch(s.op, s.attrs), (ins, outs), graph_safe=False)


def plan_arena(program: Program) -> int:
    """Give every arena/input/scratch storage a byte offset; storages live from the first to the
    last launch that touches them (inputs from the start, outputs to the end). Storages whose
    lifetimes overlap never share bytes. Returns the arena size."""
    n = len(program.launches)

    def visit(x, i):
        if isinstance(x, Operand):
            st = x.storage
            st.first, st.last = min(st.first, i), max(st.last, i)
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y, i)

    for i, l in enumerate(program.launches):
        visit(l.args, i)
    for op in program.inputs.values():
        op.storage.first = -1
        op.storage.last = max(op.storage.last, -1)
    for op in program.outputs.values():
        op.storage.last = n
        op.storage.first = min(op.storage.first, n)
    placed: list[Storage] = []
    total = 0
    pool = [s for s in program.storages if s.kind in ("arena", "input", "scratch") and s.last >= s.first]
    for st in sorted(pool, key=lambda s: (-s.nbytes, s.index)):
        size = (st.nbytes + ALIGN - 1) // ALIGN * ALIGN
        busy = sorted((p.offset, p.offset + (p.nbytes + ALIGN - 1) // ALIGN * ALIGN) for p in placed
                      if not (p.last < st.first or st.last < p.first))
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        st.offset = off
        placed.append(st)
        total = max(total, off + size)
    return total


def lower(plan: Plan, state: dict[str, str] | None = None, num_sms: int = 132, device_type: str = "cuda") -> Program:
    return Lowering(plan, state, num_sms, device_type).lower()
