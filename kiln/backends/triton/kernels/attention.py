"""Attention archetype: a flash-style forward kernel and a split-KV decode kernel.

Both compute softmax(q k^T * scale [softcapped] [+ mask]) v with online softmax, never
materializing the [Sq, Sk] scores, and can write the log-sum-exp of each query's scores
(what the backward needs). Causal and sliding-window masks align the last query with the last
key (query i sits at key position i + Sk - Sq) and skip key blocks that are fully masked.
GQA: query head h reads key/value head h // (Hq / Hk).

The decode kernel (few query rows, e.g. one token per step over a static KV cache) packs the
Hq / Hk query heads that share a key/value head into the rows of one tile, so each K/V block
is read once per group, and splits the keys over several programs (flash-decoding), so a
batch-1 step still fills the GPU; the last program of a group to finish (an arrival counter)
merges the partial results in the same launch.

Fully masked rows give 0 and a log-sum-exp of -inf, like the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..device import interpreting, programmatic_launch
from .launch import launch
from . import tmath as tm


@triton.jit
def capped_scores(a, b, scale, softcap, SOFTCAP: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr):
    """a @ b * scale, softcapped (cap * tanh(s / cap)): the scores before any mask, float32."""
    s = tm.mma(a, b, IEEE, INTERP) * scale
    if SOFTCAP:
        s = tm.tanh(s / softcap) * softcap
    return s


@triton.jit
def mask_scores(s, qpos, kn, row_ok, mask_ptrs, Sk, window,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr):
    """s with -inf where a query (at key position qpos) may not see key kn, plus the additive mask.
    qpos, kn, row_ok (the query row exists) and mask_ptrs broadcast to s's shape, so one helper
    serves [queries, keys] tiles (forward, dQ) and [keys, queries] tiles (dK/dV). MASK: none, bool,
    add, or bool_keys / add_keys for a mask that broadcasts over the queries (a padding mask
    [B, 1, 1, Sk]), whose mask_ptrs has kn's shape: a vector load instead of a tile."""
    allowed = (kn < Sk) & row_ok
    if CAUSAL:
        allowed = allowed & (kn <= qpos)
    if HAS_WINDOW:
        allowed = allowed & (qpos - kn < window)
        if not CAUSAL:
            allowed = allowed & (kn - qpos < window)
    if MASK == "bool":
        mv = tl.load(mask_ptrs, mask=allowed, other=0)
        allowed = allowed & (mv != 0)
    elif MASK == "add":
        mv = tl.load(mask_ptrs, mask=allowed, other=0.0)
        s = s + mv.to(tl.float32)
    elif MASK == "bool_keys":   # a mask that varies along keys only: mask_ptrs shaped like kn, one load a key
        allowed = allowed & (tl.load(mask_ptrs, mask=kn < Sk, other=0) != 0)
    elif MASK == "add_keys":
        s = s + tl.load(mask_ptrs, mask=kn < Sk, other=0.0).to(tl.float32)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def key_range(m0, Sq, Sk, window, BM: tl.constexpr, BN: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[lo, hi) of the keys query rows m0 .. m0 + BM - 1 may see (lo a multiple of BN): the key
    blocks outside it are fully masked and skipped."""
    lo = 0
    hi = Sk
    if CAUSAL:
        hi = tl.minimum(Sk, m0 + BM + Sk - Sq)
    if HAS_WINDOW:
        lo = tl.maximum(0, m0 + Sk - Sq - window + 1)
        lo = (lo // BN) * BN
        if not CAUSAL:
            hi = tl.minimum(Sk, m0 + BM + Sk - Sq + window - 1)
    return lo, hi


@triton.jit
def _scores(q, kt, qpos, kn, mask_ptr, m_off, mrow, Sk, scale, softcap, window,
            CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASK: tl.constexpr,
            smn, IEEE: tl.constexpr, INTERP: tl.constexpr):
    s = capped_scores(q, kt, scale, softcap, SOFTCAP, IEEE, INTERP)
    return mask_scores(s, qpos[:, None], kn[None, :], mrow[:, None],
                       mask_ptr + m_off[:, None] + kn[None, :].to(tl.int64) * smn, Sk, window,
                       CAUSAL, HAS_WINDOW, MASK)


@triton.jit
def _attn_fwd(q, k, v, mask, out, lse,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              smb, smh, smm, smn, sob, soh, som, sod, slb, slh,
              H, G, Sq, Sk, D, scale, softcap, window,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASK: tl.constexpr,
              WRITE_LSE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
              IEEE: tl.constexpr, INTERP: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // G
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    mrow = rm < Sq
    dmask = rd < D
    qt = tl.load(q + b * sqb + h * sqh + rm[:, None].to(tl.int64) * sqm + rd[None, :] * sqd,
                 mask=mrow[:, None] & dmask[None, :], other=0.0)
    qpos = rm + (Sk - Sq)
    m_off = b * smb + h * smh + rm.to(tl.int64) * smm

    lo, hi = key_range(pid_m * BM, Sq, Sk, window, BM, BN, CAUSAL, HAS_WINDOW)

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    kbase = k + b * skb + hk * skh
    vbase = v + b * svb + hk * svh
    for n0 in range(lo, hi, BN):
        kn = n0 + tl.arange(0, BN)
        nmask = kn < Sk
        kt = tl.load(kbase + kn[None, :].to(tl.int64) * skn + rd[:, None] * skd,
                     mask=dmask[:, None] & nmask[None, :], other=0.0)
        s = _scores(qt, kt, qpos, kn, mask, m_off, mrow, Sk, scale, softcap, window,
                    CAUSAL, HAS_WINDOW, SOFTCAP, MASK, smn, IEEE, INTERP)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(vbase + kn[:, None].to(tl.int64) * svn + rd[None, :] * svd,
                     mask=nmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tm.mma(p.to(vt.dtype), vt, IEEE, INTERP)
        m_i = m_new
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(out + b * sob + h * soh + rm[:, None].to(tl.int64) * som + rd[None, :] * sod,
             o.to(out.dtype.element_ty), mask=mrow[:, None] & dmask[None, :])
    if WRITE_LSE:
        lv = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
        tl.store(lse + b * slb + h * slh + rm, lv, mask=mrow)


@triton.jit
def _attn_decode(q, k, v, mask, out, lse, o_part, ml_part, arrived, xk, xv, cos, sin, slot,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                 smb, smh, smm, smn, sob, soh, som, sod, slb, slh,
                 sxkb, sxkh, sxkd, sxvb, sxvh, sxvd, scb, scd,
                 Hk, G, Sq, Sk, D, R2, scale, softcap, window, chunk,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASK: tl.constexpr,
                 WRITE_LSE: tl.constexpr, DIRECT: tl.constexpr, SPLITS: tl.constexpr,
                 ROPE: tl.constexpr, INTERLEAVED: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, IEEE: tl.constexpr,
                 INTERP: tl.constexpr, PDL: tl.constexpr):
    bhk = tl.program_id(0)
    split = tl.program_id(1)
    b = (bhk // Hk).to(tl.int64)
    hk = (bhk % Hk).to(tl.int64)
    r = tl.arange(0, BM)
    rd = tl.arange(0, BD)
    mrow = r < G * Sq
    dmask = rd < D
    lo = split * chunk
    hi = tl.minimum(Sk, lo + chunk)
    if HAS_WINDOW:
        lo = tl.maximum(lo, ((Sk - Sq - window + 1) // BN) * BN)
    kbase = k + b * skb + hk * skh
    vbase = v + b * svb + hk * svh
    if ROPE:
        # With the cache write fused in, no earlier kernel of the run writes these caches: the
        # first key block loads while the previous kernel drains (the slot's row, written by this
        # launch, is patched in registers below)
        kt, vt = _kv_block(kbase, vbase, lo, hi, skn, skd, svn, svd, rd, dmask, BN)
        tm.enter_after_previous(PDL)
    else:
        tm.enter_after_previous(PDL)
        kt, vt = _kv_block(kbase, vbase, lo, hi, skn, skd, svn, svd, rd, dmask, BN)
    h = hk * G + (r // Sq).to(tl.int64)
    qi = r % Sq
    q_ptrs = q + b * sqb + h[:, None] * sqh + qi[:, None].to(tl.int64) * sqm
    qt = tl.load(q_ptrs + rd[None, :] * sqd, mask=mrow[:, None] & dmask[None, :], other=0.0)
    pos = -1
    k_new = tl.zeros([BD], k.dtype.element_ty)
    v_new = tl.zeros([BD], v.dtype.element_ty)
    if ROPE:
        # q and the new key arrive unrotated (one token, Sq == 1): rotate both here; the program
        # whose split holds the slot writes k and v into the caches, and every program uses the
        # new rows from registers (no write-then-read round trip)
        pd, sign, c, sn = _rope_lanes(cos + b * scb, sin + b * scb, scd, rd, R2, dmask, INTERLEAVED)
        qp = tl.load(q_ptrs + pd[None, :] * sqd, mask=mrow[:, None] & dmask[None, :], other=0.0)
        qt = (qt.to(tl.float32) * c[None, :] + sign[None, :] * qp.to(tl.float32) * sn[None, :]).to(qt.dtype)
        pos = tl.load(slot).to(tl.int64)
        kr = xk + b * sxkb + hk * sxkh
        ka = tl.load(kr + rd * sxkd, mask=dmask, other=0.0).to(tl.float32)
        kp = tl.load(kr + pd * sxkd, mask=dmask, other=0.0).to(tl.float32)
        k_new = (ka * c + sign * kp * sn).to(k.dtype.element_ty)
        v_new = tl.load(xv + b * sxvb + hk * sxvh + rd * sxvd, mask=dmask, other=0.0).to(v.dtype.element_ty)
        if (pos >= 0) & (pos < Sk) & (pos // chunk == split):
            tl.store(k + b * skb + hk * skh + pos * skn + rd * skd, k_new, mask=dmask)
            tl.store(v + b * svb + hk * svh + pos * svn + rd * svd, v_new, mask=dmask)
    qpos = qi + (Sk - Sq)
    m_off = b * smb + h * smh + qi.to(tl.int64) * smm

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    for n0 in range(lo, hi, BN):
        kn = n0 + tl.arange(0, BN)
        # the next block's loads go out before this block's math
        k_next, v_next = _kv_block(kbase, vbase, n0 + BN, hi, skn, skd, svn, svd, rd, dmask, BN)
        if ROPE:
            kt = tl.where(kn[None, :] == pos, k_new[:, None], kt)
            vt = tl.where(kn[:, None] == pos, v_new[None, :], vt)
        s = _scores(qt, kt, qpos, kn, mask, m_off, mrow, hi, scale, softcap, window,
                    CAUSAL, HAS_WINDOW, SOFTCAP, MASK, smn, IEEE, INTERP)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tm.mma(p.to(vt.dtype), vt, IEEE, INTERP)
        m_i = m_new
        kt, vt = k_next, v_next
    if DIRECT:
        empty = l_i == 0.0
        o = acc / tl.where(empty, 1.0, l_i)[:, None]
        tl.store(out + b * sob + h[:, None] * soh + qi[:, None].to(tl.int64) * som + rd[None, :] * sod,
                 o.to(out.dtype.element_ty), mask=mrow[:, None] & dmask[None, :])
        if WRITE_LSE:
            lv = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
            tl.store(lse + b * slb + h * slh + qi, lv, mask=mrow)
    else:
        part = (bhk * SPLITS + split).to(tl.int64)
        tl.store(o_part + part * BM * BD + r[:, None] * BD + rd[None, :], acc)
        tl.store(ml_part + part * 2 * BM + r, m_i)
        tl.store(ml_part + part * 2 * BM + BM + r, l_i)
        # The last split of this (batch, KV head) to arrive merges all partials: no second launch.
        # The barrier orders every thread's stores before the release; the acquire makes the
        # other programs' partials visible to the one that merges.
        tl.debug_barrier()
        if tl.atomic_add(arrived + bhk, 1, sem="acq_rel") == SPLITS - 1:
            _combine_splits(out, lse, o_part, ml_part, sob, soh, som, sod, slb, slh, bhk, Hk, G, Sq, D,
                            WRITE_LSE, SPLITS, BM, BD)
            tl.atomic_xchg(arrived + bhk, 0)    # ready for the next run (and CUDA-graph replay)


@triton.jit
def _kv_block(kbase, vbase, n0, hi, skn, skd, svn, svd, rd, dmask, BN: tl.constexpr):
    """Keys n0 .. n0 + BN - 1 below hi: k transposed [BD, BN] and v [BN, BD] (0 past hi)."""
    kn = n0 + tl.arange(0, BN)
    nmask = kn < hi
    kt = tl.load(kbase + kn[None, :].to(tl.int64) * skn + rd[:, None] * skd,
                 mask=dmask[:, None] & nmask[None, :], other=0.0)
    vt = tl.load(vbase + kn[:, None].to(tl.int64) * svn + rd[None, :] * svd,
                 mask=nmask[:, None] & dmask[None, :], other=0.0)
    return kt, vt


@triton.jit
def _rope_lanes(cos, sin, scd, rd, R2, dmask, INTERLEAVED: tl.constexpr):
    """Rotary embedding as a gather over a row's lanes: out[d] = x[d] * c[d] + sign[d] * x[pd[d]] * s[d]
    (the half-split layout pairs d with d +- R2, interleaved pairs 2j with 2j + 1; lanes past 2 * R2
    pass through: c 1, s 0). Returns the partner lane pd, sign, and c, s as float32."""
    rot = rd < 2 * R2
    if INTERLEAVED:
        pd = rd ^ 1
        sign = tl.where(rd % 2 == 0, -1.0, 1.0)
        ci = rd // 2
    else:
        first = rd < R2
        pd = tl.where(first, rd + R2, rd - R2)
        sign = tl.where(first, -1.0, 1.0)
        ci = tl.where(first, rd, rd - R2)
    pd = tl.where(rot, pd, rd)
    c = tl.load(cos + ci * scd, mask=rot & dmask, other=1.0).to(tl.float32)
    sn = tl.load(sin + ci * scd, mask=rot & dmask, other=0.0).to(tl.float32)
    return pd, sign, tl.where(rot, c, 1.0), tl.where(rot, sn, 0.0)


@triton.jit
def _combine_splits(out, lse, o_part, ml_part, sob, soh, som, sod, slb, slh, bhk, Hk, G, Sq, D,
                    WRITE_LSE: tl.constexpr, SPLITS: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    b = (bhk // Hk).to(tl.int64)
    hk = (bhk % Hk).to(tl.int64)
    r = tl.arange(0, BM)
    rd = tl.arange(0, BD)
    mrow = r < G * Sq
    h = hk * G + (r // Sq).to(tl.int64)
    qi = r % Sq
    # one pass, unrolled: every split's partial loads at once instead of one round trip per split
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    for s in tl.static_range(SPLITS):
        part = (bhk * SPLITS + s).to(tl.int64)
        ms = tl.load(ml_part + part * 2 * BM + r, cache_modifier=".cg")
        ls = tl.load(ml_part + part * 2 * BM + BM + r, cache_modifier=".cg")
        o_s = tl.load(o_part + part * BM * BD + r[:, None] * BD + rd[None, :], cache_modifier=".cg")
        m_new = tl.maximum(m, ms)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        keep = tl.exp(m - m_safe)
        w = tl.exp(ms - m_safe)
        l = l * keep + ls * w
        acc = acc * keep[:, None] + o_s * w[:, None]
        m = m_new
    empty = l == 0.0
    o = acc / tl.where(empty, 1.0, l)[:, None]
    tl.store(out + b * sob + h[:, None] * soh + qi[:, None].to(tl.int64) * som + rd[None, :] * sod,
             o.to(out.dtype.element_ty), mask=mrow[:, None] & (rd[None, :] < D))
    if WRITE_LSE:
        lv = tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, l)))
        tl.store(lse + b * slb + h * slh + qi, lv, mask=mrow)


# Decode key splits: at least one 64-key block per program, at most 16 programs per KV head.
# bench/attention_decode.py on an H200 (135M shape, rope + mask, us a launch): a 256-key cache 5.77
# in one program, 5.46 in 2 splits, 4.68 in 4; a 2048-key cache 7.15 in 16 splits, 7.86 in 32.
DECODE_SPLIT_KEYS = 64
DECODE_MAX_SPLITS = 16


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


class Attention:
    """One attention launch for fixed shapes: q [B, Hq, Sq, D], k/v [B, Hk, Sk, D|Dv] (any strides)."""

    archetype = "attention"

    def __init__(self, q_shape, k_shape, v_shape, dtype: torch.dtype, *, causal=False, scale=None, window=None,
                 softcap=None, mask_kind: str = "none", write_lse: bool = False, num_sms: int = 132,
                 force: str | None = None, rope: tuple[int, bool] | None = None, splits: int | None = None):
        """rope: (rot_half, interleaved) when q and the new key/value arrive unrotated and uncached
        (the decode step's rope(q), rope(k) and both cache writes fused in, Sq == 1). splits: how
        many programs share a decode's keys (None: from the shape; bench/attention_decode.py sweeps it)."""
        B, Hq, Sq, D = q_shape
        _, Hk, Sk, _ = k_shape
        Dv = v_shape[3]
        if Dv != D:
            raise NotImplementedError(f"Triton attention needs equal q/k and v head dims, got {D} and {Dv}")
        if mask_kind not in ("none", "bool", "add"):
            raise ValueError(f"mask kind {mask_kind!r}")
        self.B, self.Hq, self.Hk, self.Sq, self.Sk, self.D = B, Hq, Hk, Sq, Sk, D
        self.G = Hq // Hk
        self.scale = float(D ** -0.5 if scale is None else scale)
        self.flags = dict(CAUSAL=bool(causal), HAS_WINDOW=window is not None, SOFTCAP=softcap is not None,
                          MASK=mask_kind, WRITE_LSE=write_lse, IEEE=dtype == torch.float32,
                          INTERP=interpreting())
        self.softcap = float(softcap) if softcap is not None else 1.0
        self.window = int(window) if window is not None else 0
        self.BD = _pow2(D)
        rows = self.G * Sq
        self.decode = (force == "decode") or (force is None and Sq <= 16 and rows <= 64)
        self.rope = rope
        if rope is not None and not (self.decode and Sq == 1 and 2 * rope[0] <= D):
            raise NotImplementedError("rope fused into attention: a decode step of one token per row")
        if self.decode:
            self.BM = _pow2(rows)
            self.BN = 16 if interpreting() else 64
            want = max(1, (2 * num_sms) // max(1, B * Hk))
            # the last split to finish merges in the same launch (no second kernel), so small splits pay
            self.splits = max(1, min(want, DECODE_MAX_SPLITS, triton.cdiv(Sk, DECODE_SPLIT_KEYS)))
            if interpreting():   # small test shapes: still exercise the split + combine path
                self.splits = 2 if Sk >= 2 * self.BN else 1
            if splits is not None:
                self.splits = max(1, min(int(splits), triton.cdiv(Sk, self.BN)))
            chunk = triton.cdiv(triton.cdiv(Sk, self.splits), self.BN) * self.BN
            self.splits = triton.cdiv(Sk, chunk)
            self.chunk = chunk
            self.pdl = programmatic_launch()   # decode steps are chains of small launches
        else:
            self.BM = 16 if interpreting() else (64 if self.BD > 64 or dtype == torch.float32 else 128)
            self.BN = 16 if interpreting() else (32 if dtype == torch.float32 else 64)
            self.splits = 1
        self._arrived = None

    def scratch(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Buffers the launch needs while it runs: the split-KV partial results."""
        if not self.decode or self.splits == 1:
            return []
        parts = self.B * self.Hk * self.splits
        return [((parts, self.BM, self.BD), torch.float32), ((parts, 2, self.BM), torch.float32)]

    def __call__(self, q, k, v, mask, out, lse=None, scratch=(), rope_args=None) -> None:
        """rope_args (with `rope`): the new key and value [B, Hk, 1, D], cos and sin [B|1, 1, rot_half]
        and the cache slot (int [1]); k and v are then the caches, written at the slot."""
        m = mask if mask is not None else q
        ms = _mask_strides(mask, (self.B, self.Hq, self.Sq, self.Sk))
        ls = (lse.stride(0), lse.stride(1)) if lse is not None else (0, 0)
        lse_t = lse if lse is not None else out
        common = (*q.stride(), *k.stride(), *v.stride(), *ms, *out.stride(), *ls)
        if self.decode:
            direct = self.splits == 1
            o_part, ml_part = scratch if not direct else (out, out)
            if not direct and (self._arrived is None or self._arrived.device != q.device):
                # split arrival counters: zero between runs (the merging program resets them), so
                # they live with the launch, not in the arena whose bytes other launches reuse
                self._arrived = torch.zeros(self.B * self.Hk, dtype=torch.int32, device=q.device)
            arrived = self._arrived if not direct else out
            warps = 4 if self.BM * self.BD <= 128 * 64 else 8
            if self.rope is not None:
                xk, xv, cos, sin, slot = rope_args
                if sin.stride() != cos.stride():
                    raise ValueError("rope: cos and sin must share one layout")
                rs = (xk.stride(0), xk.stride(1), xk.stride(3), xv.stride(0), xv.stride(1), xv.stride(3),
                      cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(2))
            else:
                xk = xv = cos = sin = slot = q
                rs = (0,) * 8
            launch(_attn_decode, (self.B * self.Hk, self.splits),
                q, k, v, m, out, lse_t, o_part, ml_part, arrived, xk, xv, cos, sin, slot, *common, *rs,
                self.Hk, self.G, self.Sq, self.Sk, self.D, self.rope[0] if self.rope else 0, self.scale,
                self.softcap, self.window, self.chunk,
                DIRECT=direct, SPLITS=self.splits, ROPE=self.rope is not None,
                INTERLEAVED=bool(self.rope and self.rope[1]), BM=self.BM, BN=self.BN, BD=self.BD,
                num_warps=warps, early_launch=self.pdl, **self.flags)
        else:
            grid = (triton.cdiv(self.Sq, self.BM), self.B * self.Hq)
            launch(_attn_fwd, grid, q, k, v, m, out, lse_t, *common,
                            self.Hq, self.G, self.Sq, self.Sk, self.D, self.scale, self.softcap, self.window,
                            BM=self.BM, BN=self.BN, BD=self.BD, num_warps=4 if self.BM <= 64 else 8,
                            num_stages=2, **self.flags)


def _mask_strides(mask, full) -> tuple[int, int, int, int]:
    """Strides of the mask broadcast to [B, Hq, Sq, Sk] (0 along broadcast dims)."""
    if mask is None:
        return (0, 0, 0, 0)
    pad = 4 - mask.dim()
    out = []
    for i, d in enumerate(full):
        j = i - pad
        if j < 0 or mask.shape[j] == 1 and d != 1:
            out.append(0)
        else:
            out.append(mask.stride(j))
    return tuple(out)
