"""Layout / gather archetype: rotary embedding, embedding gather and the KV-cache write.

Transposes, slices, broadcasts and reshapes are strided *views* in this backend (no kernel);
a copy that materializes a view (a transpose feeding a kernel that wants rows, a concat's
pieces) is the pointwise kernel with an identity expression, which reads any strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..device import interpreting, programmatic_launch
from . import tmath as tm
from .launch import launch


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


@triton.jit
def _rope_rows(x, cos, sin, out, block, n_rows, H, S, D, R2,
               sxb, sxh, sxs, sxd, scb, scs, scd, sob, soh, sos, sod,
               INTERLEAVED: tl.constexpr, PASS: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr,
               BP: tl.constexpr):
    """Rows [block * BR, (block + 1) * BR) of x [B, H, S, D] rotated into out."""
    rows = block * BR + tl.arange(0, BR)
    rmask = rows < n_rows
    s = (rows % S).to(tl.int64)
    bh = rows // S
    h = (bh % H).to(tl.int64)
    b = (bh // H).to(tl.int64)
    j = tl.arange(0, BH)
    jm = rmask[:, None] & (j[None, :] < R2)
    xrow = x + b[:, None] * sxb + h[:, None] * sxh + s[:, None] * sxs
    orow = out + b[:, None] * sob + h[:, None] * soh + s[:, None] * sos
    crow = b[:, None] * scb + s[:, None] * scs + j[None, :] * scd
    c = tl.load(cos + crow, mask=jm, other=0.0).to(tl.float32)
    sn = tl.load(sin + crow, mask=jm, other=0.0).to(tl.float32)
    if INTERLEAVED:
        i1 = 2 * j
        i2 = 2 * j + 1
    else:
        i1 = j
        i2 = j + R2
    x1 = tl.load(xrow + i1[None, :] * sxd, mask=jm, other=0.0).to(tl.float32)
    x2 = tl.load(xrow + i2[None, :] * sxd, mask=jm, other=0.0).to(tl.float32)
    tl.store(orow + i1[None, :] * sod, (x1 * c - x2 * sn).to(out.dtype.element_ty), mask=jm)
    tl.store(orow + i2[None, :] * sod, (x2 * c + x1 * sn).to(out.dtype.element_ty), mask=jm)
    if PASS:
        p = 2 * R2 + tl.arange(0, BP)
        pm = rmask[:, None] & (p[None, :] < D)
        tl.store(orow + p[None, :] * sod, tl.load(xrow + p[None, :] * sxd, mask=pm, other=0.0), mask=pm)


@triton.jit
def _rope_kernel(x, cos, sin, out, n_rows, H, S, D, R2,
                 sxb, sxh, sxs, sxd, scb, scs, scd, sob, soh, sos, sod,
                 INTERLEAVED: tl.constexpr, PASS: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr,
                 BP: tl.constexpr):
    _rope_rows(x, cos, sin, out, tl.program_id(0), n_rows, H, S, D, R2, sxb, sxh, sxs, sxd, scb, scs, scd,
               sob, soh, sos, sod, INTERLEAVED, PASS, BR, BH, BP)


@triton.jit
def _rope_pair_kernel(x, out, n_rows, H, sxb, sxh, sxs, sxd, sob, soh, sos, sod,
                      x2, out2, n_rows2, H2, sxb2, sxh2, sxs2, sxd2, sob2, soh2, sos2, sod2,
                      cos, sin, S, D, R2, scb, scs, scd, BLOCKS,
                      INTERLEAVED: tl.constexpr, PASS: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr,
                      BP: tl.constexpr):
    """Two tensors rotated by one table (q and k): the first BLOCKS programs take the first."""
    pid = tl.program_id(0)
    if pid < BLOCKS:
        _rope_rows(x, cos, sin, out, pid, n_rows, H, S, D, R2, sxb, sxh, sxs, sxd, scb, scs, scd,
                   sob, soh, sos, sod, INTERLEAVED, PASS, BR, BH, BP)
    else:
        _rope_rows(x2, cos, sin, out2, pid - BLOCKS, n_rows2, H2, S, D, R2, sxb2, sxh2, sxs2, sxd2, scb, scs, scd,
                   sob2, soh2, sos2, sod2, INTERLEAVED, PASS, BR, BH, BP)


class Rope:
    """x [B, H, S, D] (any strides), cos/sin [B or 1, S, rot/2] -> out [B, H, S, D]."""

    archetype = "layout"

    def __init__(self, x_shape, rot_half: int, interleaved: bool):
        B, H, S, D = x_shape
        self.B, self.H, self.S, self.D, self.R2 = B, H, S, D, rot_half
        self.n_rows = B * H * S
        self.BH = _pow2(rot_half, 2)
        self.PASS = D > 2 * rot_half
        self.BP = _pow2(D - 2 * rot_half, 2) if self.PASS else 2
        self.BR = max(1, min(64 if not interpreting() else 256, 4096 // self.BH))
        self.interleaved = interleaved

    def __call__(self, x, cos, sin, out) -> None:
        launch(_rope_kernel, (triton.cdiv(self.n_rows, self.BR),),
            x, cos, sin, out, self.n_rows, self.H, self.S, self.D, self.R2,
            *x.stride(), *self._table_strides(cos, sin), *out.stride(),
            INTERLEAVED=self.interleaved, PASS=self.PASS, BR=self.BR, BH=self.BH, BP=self.BP, num_warps=4)

    @staticmethod
    def _table_strides(cos, sin) -> tuple[int, int, int]:
        if sin.stride() != cos.stride():
            raise ValueError("rope: cos and sin must share one layout")
        return cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1), cos.stride(2)


class RopePair:
    """Two Ropes of one table and head dim (the Plan's rope_pair kernel: q and k) in one launch."""

    archetype = "layout"

    def __init__(self, first: Rope, second: Rope):
        if (first.S, first.D, first.R2, first.interleaved) != (second.S, second.D, second.R2, second.interleaved):
            raise ValueError("rope pair: the two ropes differ in sequence, head dim, rotation or layout")
        self.first, self.second = first, second

    def __call__(self, x, out, x2, out2, cos, sin) -> None:
        a, b = self.first, self.second
        blocks = triton.cdiv(a.n_rows, a.BR)
        launch(_rope_pair_kernel, (blocks + triton.cdiv(b.n_rows, b.BR),),
            x, out, a.n_rows, a.H, *x.stride(), *out.stride(),
            x2, out2, b.n_rows, b.H, *x2.stride(), *out2.stride(),
            cos, sin, a.S, a.D, a.R2, *Rope._table_strides(cos, sin), blocks,
            INTERLEAVED=a.interleaved, PASS=a.PASS, BR=a.BR, BH=a.BH, BP=a.BP, num_warps=4)


@triton.jit
def _embedding_kernel(ids, w, out, Dm, V, sw, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    tok = tl.load(ids + row).to(tl.int64)
    ok = (tok >= 0) & (tok < V)   # ids are checked on the host; never read out of bounds here
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    m = (cols < Dm) & ok
    vals = tl.load(w + tok * sw + cols, mask=m, other=0.0)
    tl.store(out + row * Dm + cols, vals, mask=cols < Dm)


class Embedding:
    """weight[ids]: ids (any shape, contiguous) -> out [*ids.shape, dim] (contiguous)."""

    archetype = "layout"

    def __init__(self, n_ids: int, vocab: int, dim: int):
        self.n, self.V, self.Dm = n_ids, vocab, dim
        self.block = min(_pow2(dim, 16), 1024)

    def __call__(self, ids, weight, out) -> None:
        if weight.stride(1) != 1:
            raise ValueError("embedding: the weight's rows must be contiguous")
        launch(_embedding_kernel, (self.n, triton.cdiv(self.Dm, self.block)),
            ids, weight, out, self.Dm, self.V, weight.stride(0), BLOCK=self.block, num_warps=4)


@triton.jit
def _kv_write_kernel(cache, new, pos, H, S, Smax, D,
                     scb, sch, scs, scd, snb, snh, sns, snd, POS_PER_BATCH: tl.constexpr, BD: tl.constexpr):
    row = tl.program_id(0)
    s = row % S
    bh = row // S
    h = (bh % H).to(tl.int64)
    b = (bh // H).to(tl.int64)
    if POS_PER_BATCH:
        p = tl.load(pos + b).to(tl.int64)
    else:
        p = tl.load(pos).to(tl.int64)
    dst = p + s
    d = tl.arange(0, BD)
    m = (d < D) & (dst >= 0) & (dst < Smax)   # out-of-range positions write nothing (checked on the host)
    v = tl.load(new + b * snb + h * snh + s * sns + d * snd, mask=d < D, other=0.0)
    tl.store(cache + b * scb + h * sch + dst * scs + d * scd, v.to(cache.dtype.element_ty), mask=m)


class KVCacheWrite:
    """In place: cache[b, :, pos[b] + s, :] = new[b, :, s, :] for a static cache [B, H, Smax, D]."""

    archetype = "layout"

    def __init__(self, cache_shape, new_shape, pos_per_batch: bool):
        B, H, Smax, D = cache_shape
        if tuple(new_shape[:2]) != (B, H) or new_shape[3] != D or new_shape[2] > Smax:
            raise ValueError(f"kv cache write: new {tuple(new_shape)} does not fit cache {tuple(cache_shape)}")
        self.B, self.H, self.S, self.Smax, self.D = B, H, new_shape[2], Smax, D
        self.BD = _pow2(D, 16)
        self.per_batch = pos_per_batch

    def __call__(self, cache, new, pos) -> None:
        launch(_kv_write_kernel, (self.B * self.H * self.S,),
            cache, new, pos, self.H, self.S, self.Smax, self.D, *cache.stride(), *new.stride(),
            POS_PER_BATCH=self.per_batch, BD=self.BD, num_warps=1)


def kv_cache_write(cache: torch.Tensor, new: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Write `new` [B, H, S, D] into `cache` [B, H, Smax, D] at positions pos (int tensor [B] or [1])."""
    if pos.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"kv_cache_write: pos must be int32 or int64, got {pos.dtype}")
    per_batch = pos.numel() == cache.shape[0] and cache.shape[0] > 1
    if not per_batch and pos.numel() != 1:
        raise ValueError(f"kv_cache_write: pos must have 1 or B={cache.shape[0]} entries, got {pos.numel()}")
    KVCacheWrite(cache.shape, new.shape, per_batch)(cache, new, pos)
    return cache


@triton.jit
def _rope_row(src, dst, c, sn, j, jm, ok, sxd, sod, D, R2, INTERLEAVED: tl.constexpr, PASS: tl.constexpr,
              BP: tl.constexpr):
    if INTERLEAVED:
        i1 = 2 * j
        i2 = 2 * j + 1
    else:
        i1 = j
        i2 = j + R2
    x1 = tl.load(src + i1 * sxd, mask=jm, other=0.0).to(tl.float32)
    x2 = tl.load(src + i2 * sxd, mask=jm, other=0.0).to(tl.float32)
    tl.store(dst + i1 * sod, (x1 * c - x2 * sn).to(dst.dtype.element_ty), mask=jm & ok)
    tl.store(dst + i2 * sod, (x2 * c + x1 * sn).to(dst.dtype.element_ty), mask=jm & ok)
    if PASS:
        p = 2 * R2 + tl.arange(0, BP)
        pm = (p < D) & ok
        tl.store(dst + p * sod, tl.load(src + p * sxd, mask=pm, other=0.0).to(dst.dtype.element_ty), mask=pm)


@triton.jit
def _rope_qkv_cache_kernel(xq, xk, xv, cos, sin, q_out, k_cache, v_cache, slot,
                           Hq, Hk, D, R2, L,
                           sqb, sqh, sqd, skb, skh, skd, svb, svh, svd, scb, scd,
                           sob, soh, sod, skcb, skch, skcl, skcd, svcb, svch, svcl, svcd,
                           INTERLEAVED: tl.constexpr, PASS: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr,
                           BD: tl.constexpr, PDL: tl.constexpr):
    tm.enter_after_previous(PDL)
    # one program per row: rows [0, B*Hq) rotate q, [B*Hq, B*(Hq+Hk)) rotate k into the cache at
    # `slot`, the rest copy v into the cache at `slot` (one decode token per row)
    r = tl.program_id(0)
    B = tl.num_programs(0) // (Hq + 2 * Hk)
    pos = tl.load(slot).to(tl.int64)
    ok = (pos >= 0) & (pos < L)
    j = tl.arange(0, BH)
    jm = j < R2
    if r < B * Hq:
        b = (r // Hq).to(tl.int64)
        h = (r % Hq).to(tl.int64)
        c = tl.load(cos + b * scb + j * scd, mask=jm, other=0.0).to(tl.float32)
        sn = tl.load(sin + b * scb + j * scd, mask=jm, other=0.0).to(tl.float32)
        _rope_row(xq + b * sqb + h * sqh, q_out + b * sob + h * soh, c, sn, j, jm, pos == pos, sqd, sod, D, R2,
                  INTERLEAVED, PASS, BP)
    elif r < B * (Hq + Hk):
        r2 = r - B * Hq
        b = (r2 // Hk).to(tl.int64)
        h = (r2 % Hk).to(tl.int64)
        c = tl.load(cos + b * scb + j * scd, mask=jm, other=0.0).to(tl.float32)
        sn = tl.load(sin + b * scb + j * scd, mask=jm, other=0.0).to(tl.float32)
        _rope_row(xk + b * skb + h * skh, k_cache + b * skcb + h * skch + pos * skcl, c, sn, j, jm, ok,
                  skd, skcd, D, R2, INTERLEAVED, PASS, BP)
    else:
        r3 = r - B * (Hq + Hk)
        b = (r3 // Hk).to(tl.int64)
        h = (r3 % Hk).to(tl.int64)
        d = tl.arange(0, BD)
        dm = (d < D) & ok
        vals = tl.load(xv + b * svb + h * svh + d * svd, mask=dm, other=0.0)
        tl.store(v_cache + b * svcb + h * svch + pos * svcl + d * svcd, vals.to(v_cache.dtype.element_ty), mask=dm)


class RopeQKVCache:
    """One decode step's q/k/v epilogue in one launch: rotate q, rotate k straight into the KV cache
    at the slot, copy v into the cache at the slot. q, k, v: [B, H, 1, D] views; cos/sin [B|1, 1, rot/2];
    caches [B, Hk, L, D]; slot: int [1]. Out-of-range slots write nothing (checked on the host)."""

    archetype = "layout"

    def __init__(self, B: int, Hq: int, Hk: int, D: int, rot_half: int, L: int, interleaved: bool):
        self.B, self.Hq, self.Hk, self.D, self.R2, self.L = B, Hq, Hk, D, rot_half, L
        self.interleaved = interleaved
        self.PASS = D > 2 * rot_half
        self.BH = _pow2(rot_half, 2)
        self.BP = _pow2(D - 2 * rot_half, 2) if self.PASS else 2
        self.BD = _pow2(D, 16)
        self.pdl = programmatic_launch()   # one small launch per layer of a decode step

    def __call__(self, q, k, v, cos, sin, q_out, k_cache, v_cache, slot) -> None:
        cb = cos.stride(0) if cos.shape[0] > 1 else 0
        if sin.stride() != cos.stride():
            raise ValueError("rope: cos and sin must share one layout")
        launch(_rope_qkv_cache_kernel, (self.B * (self.Hq + 2 * self.Hk),),
               q, k, v, cos, sin, q_out, k_cache, v_cache, slot, self.Hq, self.Hk, self.D, self.R2, self.L,
               q.stride(0), q.stride(1), q.stride(3), k.stride(0), k.stride(1), k.stride(3),
               v.stride(0), v.stride(1), v.stride(3), cb, cos.stride(2),
               q_out.stride(0), q_out.stride(1), q_out.stride(3), *k_cache.stride(), *v_cache.stride(),
               INTERLEAVED=self.interleaved, PASS=self.PASS, BH=self.BH, BP=self.BP, BD=self.BD, num_warps=1,
               early_launch=self.pdl)
