"""Attention archetype, backward: flash-attention gradients from the saved log-sum-exp.

`attention_backward` in three launches (FlashAttention-2's split), none of which stores the
[Sq, Sk] probabilities:

1. `_bwd_delta`: delta = rowsum(dout * out) - dlse for every query row, float32, into the
   launch's scratch (the softmax backward's row term).
2. `_bwd_dkdv`: one program per key block and (batch, KV head). It loops over the Hq / Hk query
   heads of its GQA group and over the query blocks that can see its keys, recomputing
   P = exp(s - lse) tile by tile, so dK and dV accumulate in registers and are written once
   (no atomics).
3. `_bwd_dq`: one program per query block and (batch, query head), looping over the key blocks
   it can see.

Scores, masks (causal, window, bool / additive) and the skipped fully masked blocks come from
the forward's helpers in `attention.py`, so both directions mask alike. A row whose lse is -inf
(nothing to attend to) gets P = 0 and so 0 gradients, like the NumPy kernel. Products
accumulate in float32; P and dS enter the tensor-core products in q's dtype, as the forward's P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..device import interpreting
from . import tmath as tm
from .attention import _mask_strides, _pow2, capped_scores, key_range, mask_scores
from .launch import launch

MAX_HEAD_DIM = 128   # one [block, D] float32 accumulator pair per program; larger D would spill


@triton.jit
def query_range(n0, Sq, Sk, window, BM: tl.constexpr, BN: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[lo, hi) of the query rows that may see keys n0 .. n0 + BN - 1 (lo a multiple of BM),
    `key_range` seen from the keys: query i sits at key position i + Sk - Sq."""
    lo = 0
    hi = Sq
    if CAUSAL:
        lo = tl.maximum(0, n0 - (Sk - Sq))
    if HAS_WINDOW:
        hi = tl.minimum(Sq, n0 + BN - 1 + window - (Sk - Sq))
        if not CAUSAL:
            lo = tl.maximum(0, n0 - window + 1 - (Sk - Sq))
    lo = (lo // BM) * BM
    return lo, hi


@triton.jit
def _safe_lse(lse_ptrs, mrow):
    """The rows' lse, +inf where it is -inf (a fully masked row) or the row does not exist, so
    exp(s - lse) is 0 there."""
    lv = tl.load(lse_ptrs, mask=mrow, other=float("inf"))
    return tl.where(lv == float("-inf"), float("inf"), lv)


@triton.jit
def _bwd_delta(out, dout, dlse, delta, sob, soh, som, sod, sdob, sdoh, sdom, sdod, sgb, sgh, sgm,
               H, Sq, D, HAS_DLSE: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    mrow = rm < Sq
    msk = mrow[:, None] & (rd[None, :] < D)
    rows = rm[:, None].to(tl.int64)
    o = tl.load(out + b * sob + h * soh + rows * som + rd[None, :] * sod, mask=msk, other=0.0)
    do = tl.load(dout + b * sdob + h * sdoh + rows * sdom + rd[None, :] * sdod, mask=msk, other=0.0)
    d = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        d -= tl.load(dlse + b * sgb + h * sgh + rm.to(tl.int64) * sgm, mask=mrow, other=0.0).to(tl.float32)
    tl.store(delta + bh.to(tl.int64) * Sq + rm, d, mask=mrow)


@triton.jit
def _bwd_dkdv(q, k, v, mask, dout, lse, delta, dk, dv,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              smb, smh, smm, smn, sdob, sdoh, sdom, sdod, slb, slh, slm,
              sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
              Hk, G, Sq, Sk, D, scale, softcap, window,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASK: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // Hk).to(tl.int64)
    hk = (bhk % Hk).to(tl.int64)
    n0 = pid_n * BN
    kn = n0 + tl.arange(0, BN)
    rd = tl.arange(0, BD)
    dmask = rd < D
    kvmask = (kn < Sk)[:, None] & dmask[None, :]
    keys = kn[:, None].to(tl.int64)
    kt = tl.load(k + b * skb + hk * skh + keys * skn + rd[None, :] * skd, mask=kvmask, other=0.0)
    vt = tl.load(v + b * svb + hk * svh + keys * svn + rd[None, :] * svd, mask=kvmask, other=0.0)
    dk_acc = tl.zeros([BN, BD], tl.float32)
    dv_acc = tl.zeros([BN, BD], tl.float32)
    lo, hi = query_range(n0, Sq, Sk, window, BM, BN, CAUSAL, HAS_WINDOW)
    for g in range(G):
        h = hk * G + g
        qbase = q + b * sqb + h * sqh
        dobase = dout + b * sdob + h * sdoh
        for m0 in range(lo, hi, BM):
            rm = m0 + tl.arange(0, BM)
            mrow = rm < Sq
            rows = rm.to(tl.int64)
            qdmask = mrow[:, None] & dmask[None, :]
            qt = tl.load(qbase + rows[:, None] * sqm + rd[None, :] * sqd, mask=qdmask, other=0.0)
            do_t = tl.load(dobase + rows[:, None] * sdom + rd[None, :] * sdod, mask=qdmask, other=0.0)
            lse_m = _safe_lse(lse + b * slb + h * slh + rows * slm, mrow)
            delta_m = tl.load(delta + (b * Hk * G + h) * Sq + rows, mask=mrow, other=0.0)
            # [keys, queries] tiles: s^T = k q^T
            sT = capped_scores(kt, tl.trans(qt), scale, softcap, SOFTCAP, IEEE, INTERP)
            if MASK == "bool_keys" or MASK == "add_keys":
                mptrs = mask + b * smb + h * smh + keys * smn
            else:
                mptrs = mask + b * smb + h * smh + rows[None, :] * smm + keys * smn
            mT = mask_scores(sT, (rm + (Sk - Sq))[None, :], kn[:, None], mrow[None, :], mptrs, Sk, window,
                             CAUSAL, HAS_WINDOW, MASK)
            pT = tl.exp(mT - lse_m[None, :])
            dv_acc += tm.mma(pT.to(do_t.dtype), do_t, IEEE, INTERP)
            dpT = tm.mma(vt, tl.trans(do_t), IEEE, INTERP)
            dsT = pT * (dpT - delta_m[None, :])
            if SOFTCAP:
                t = sT / softcap
                dsT = dsT * (1.0 - t * t)
            dk_acc += tm.mma(dsT.to(qt.dtype), qt, IEEE, INTERP)
    dk_acc = dk_acc * scale
    tl.store(dk + b * sdkb + hk * sdkh + keys * sdkn + rd[None, :] * sdkd, dk_acc.to(dk.dtype.element_ty),
             mask=kvmask)
    tl.store(dv + b * sdvb + hk * sdvh + keys * sdvn + rd[None, :] * sdvd, dv_acc.to(dv.dtype.element_ty),
             mask=kvmask)


@triton.jit
def _bwd_dq(q, k, v, mask, dout, lse, delta, dq,
            sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
            smb, smh, smm, smn, sdob, sdoh, sdom, sdod, slb, slh, slm, sdqb, sdqh, sdqm, sdqd,
            H, G, Sq, Sk, D, scale, softcap, window,
            CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASK: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // G
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    mrow = rm < Sq
    dmask = rd < D
    rows = rm.to(tl.int64)
    qdmask = mrow[:, None] & dmask[None, :]
    qt = tl.load(q + b * sqb + h * sqh + rows[:, None] * sqm + rd[None, :] * sqd, mask=qdmask, other=0.0)
    do_t = tl.load(dout + b * sdob + h * sdoh + rows[:, None] * sdom + rd[None, :] * sdod, mask=qdmask, other=0.0)
    lse_m = _safe_lse(lse + b * slb + h * slh + rows * slm, mrow)
    delta_m = tl.load(delta + bh.to(tl.int64) * Sq + rows, mask=mrow, other=0.0)
    qpos = rm + (Sk - Sq)
    m_base = mask + b * smb + h * smh
    kbase = k + b * skb + hk * skh
    vbase = v + b * svb + hk * svh
    acc = tl.zeros([BM, BD], tl.float32)
    lo, hi = key_range(pid_m * BM, Sq, Sk, window, BM, BN, CAUSAL, HAS_WINDOW)
    for n0 in range(lo, hi, BN):
        kn = n0 + tl.arange(0, BN)
        keys = kn[:, None].to(tl.int64)
        kvmask = (kn < Sk)[:, None] & dmask[None, :]
        kt = tl.load(kbase + keys * skn + rd[None, :] * skd, mask=kvmask, other=0.0)
        vt = tl.load(vbase + keys * svn + rd[None, :] * svd, mask=kvmask, other=0.0)
        s = capped_scores(qt, tl.trans(kt), scale, softcap, SOFTCAP, IEEE, INTERP)
        if MASK == "bool_keys" or MASK == "add_keys":
            mptrs = m_base + kn[None, :].to(tl.int64) * smn
        else:
            mptrs = m_base + rows[:, None] * smm + kn[None, :].to(tl.int64) * smn
        ms = mask_scores(s, qpos[:, None], kn[None, :], mrow[:, None], mptrs, Sk, window, CAUSAL, HAS_WINDOW, MASK)
        p = tl.exp(ms - lse_m[:, None])
        dp = tm.mma(do_t, tl.trans(vt), IEEE, INTERP)
        ds = p * (dp - delta_m[:, None])
        if SOFTCAP:
            t = s / softcap
            ds = ds * (1.0 - t * t)
        acc += tm.mma(ds.to(kt.dtype), kt, IEEE, INTERP)
    acc = acc * scale
    tl.store(dq + b * sdqb + h * sdqh + rows[:, None] * sdqm + rd[None, :] * sdqd, acc.to(dq.dtype.element_ty),
             mask=qdmask)


@dataclass(frozen=True)
class BackwardBlocks:
    """Tile sizes of the backward launches, the one place to tune them (bench/attention_backward.py
    sweeps them)."""
    kv_n: int          # keys per dK/dV program
    kv_m: int          # query rows per step of its loop
    kv_warps: int
    q_m: int           # query rows per dQ program
    q_n: int           # keys per step of its loop
    q_warps: int
    num_stages: int = 2
    delta_m: int = 64  # query rows per delta program


def default_blocks(head_dim: int, dtype: torch.dtype, mask: str = "none") -> BackwardBlocks:
    """H200 (sm_90) choices, free of register spills when compiled for sm_90 (Triton 3.7) except
    float32 with some masks (a few dozen bytes). 64-key blocks give the dK/dV launch B * Hk * Sk / 64
    programs: 192 at the SmolLM2 training shape (B=8, Hk=3, S=512) for 132 SMs, where 128-key blocks
    would leave a third of them idle (and spill). A mask tile per block (`mask`: bool / add, not
    none or the per-key bool_keys / add_keys) takes 8 warps, or smaller tiles for D > 64; float32
    (no tensor cores in IEEE mode) takes 16-row query steps."""
    tile_mask = mask in ("bool", "add")
    if interpreting():      # small test shapes: several blocks, so the loops and skips run
        return BackwardBlocks(16, 16, 4, 16, 16, 4, 1, 16)
    if dtype == torch.float32:
        return BackwardBlocks(32, 16, 8, 32, 16, 8)
    if _pow2(head_dim) > 64:
        return BackwardBlocks(32, 32, 8, 32, 32, 8) if tile_mask else BackwardBlocks(64, 32, 8, 64, 32, 8)
    return BackwardBlocks(64, 64, 8, 64, 64, 8) if tile_mask else BackwardBlocks(64, 64, 4, 64, 64, 4)


def per_key_mask(mask: torch.Tensor | None, full_shape) -> bool:
    """Whether `mask` (a real or meta tensor) is the same for every query: broadcast along Sq (stride 0
    there, as a padding mask [B, 1, 1, Sk] is), so the kernels load it per key, not as a tile."""
    return mask is not None and (_mask_strides(mask, tuple(full_shape))[2] == 0 or full_shape[2] == 1)


class AttentionBackward:
    """One attention_backward launch (three kernels) for fixed shapes: q [B, Hq, Sq, D], k/v
    [B, Hk, Sk, D], any strides; writes dq, dk, dv. The float32 delta lives in scratch. mask_kind:
    none, bool or add; mask_per_key: the mask is the same for every query (`per_key_mask`)."""

    archetype = "attention"

    def __init__(self, q_shape, k_shape, v_shape, dtype: torch.dtype, *, causal=False, scale=None, window=None,
                 softcap=None, mask_kind: str = "none", mask_per_key: bool = False, has_dlse: bool = False,
                 blocks: BackwardBlocks | None = None):
        B, Hq, Sq, D = q_shape
        _, Hk, Sk, _ = k_shape
        if v_shape[3] != D:
            raise NotImplementedError(f"Triton attention_backward needs equal q/k and v head dims, got {D} "
                                      f"and {v_shape[3]}")
        if D > MAX_HEAD_DIM:
            raise NotImplementedError(f"Triton attention_backward takes head dims up to {MAX_HEAD_DIM}, got {D}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise NotImplementedError(f"Triton attention_backward computes float32/bfloat16/float16, got {dtype}")
        if mask_kind not in ("none", "bool", "add"):
            raise ValueError(f"mask kind {mask_kind!r}")
        if mask_kind != "none" and mask_per_key:
            mask_kind += "_keys"
        self.B, self.Hq, self.Hk, self.Sq, self.Sk, self.D = B, Hq, Hk, Sq, Sk, D
        self.G = Hq // Hk
        self.scale = float(D ** -0.5 if scale is None else scale)
        self.softcap = float(softcap) if softcap is not None else 1.0
        self.window = int(window) if window is not None else 0
        self.has_dlse = has_dlse
        self.flags = dict(CAUSAL=bool(causal), HAS_WINDOW=window is not None, SOFTCAP=softcap is not None,
                          MASK=mask_kind, IEEE=dtype == torch.float32, INTERP=interpreting())
        self.BD = _pow2(D)
        self.blocks = blocks or default_blocks(D, dtype, mask_kind)

    def scratch(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """delta [B, Hq, Sq], float32, contiguous."""
        return [((self.B, self.Hq, self.Sq), torch.float32)]

    def __call__(self, q, k, v, mask, out, lse, dout, dlse, dq, dk, dv, scratch) -> None:
        (delta,) = scratch
        bl = self.blocks
        m = mask if mask is not None else q
        ms = _mask_strides(mask, (self.B, self.Hq, self.Sq, self.Sk))
        if self.flags["MASK"].endswith("_keys") and not per_key_mask(mask, (self.B, self.Hq, self.Sq, self.Sk)):
            raise ValueError(f"attention_backward: a mask of shape {tuple(mask.shape)}, strides {mask.stride()} "
                             f"varies along the queries, but the launch was built with mask_per_key")
        g = dlse if dlse is not None else lse
        launch(_bwd_delta, (triton.cdiv(self.Sq, bl.delta_m), self.B * self.Hq),
               out, dout, g, delta, *out.stride(), *dout.stride(), *g.stride(), self.Hq, self.Sq, self.D,
               HAS_DLSE=self.has_dlse, BM=bl.delta_m, BD=self.BD, num_warps=4)
        common = (*q.stride(), *k.stride(), *v.stride(), *ms, *dout.stride(), *lse.stride())
        sizes = (self.G, self.Sq, self.Sk, self.D, self.scale, self.softcap, self.window)
        launch(_bwd_dkdv, (triton.cdiv(self.Sk, bl.kv_n), self.B * self.Hk),
               q, k, v, m, dout, lse, delta, dk, dv, *common, *dk.stride(), *dv.stride(), self.Hk, *sizes,
               BM=bl.kv_m, BN=bl.kv_n, BD=self.BD, num_warps=bl.kv_warps, num_stages=bl.num_stages, **self.flags)
        launch(_bwd_dq, (triton.cdiv(self.Sq, bl.q_m), self.B * self.Hq),
               q, k, v, m, dout, lse, delta, dq, *common, *dq.stride(), self.Hq, *sizes,
               BM=bl.q_m, BN=bl.q_n, BD=self.BD, num_warps=bl.q_warps, num_stages=bl.num_stages, **self.flags)
