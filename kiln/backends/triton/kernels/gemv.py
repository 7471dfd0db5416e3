"""Skinny matmul (decode: a few rows of activations against a weight matrix) that streams the weight.

At batch-1 decode a linear layer is a matrix-vector product: every weight byte is read once and
used for M (1 to 8) multiply-adds, so the kernel's only job is to keep HBM busy. The tensor-core
GEMM (matmul.py) pads M to 16 rows and gives each program a [BK, BN] tile along a column block;
for a 2048-wide layer that is 128 programs for 132 SMs, too few loads in flight to approach copy
bandwidth. Here each program owns BN output columns (weight rows, contiguous along K) and walks
K in BK-wide chunks, multiplying on the CUDA cores into a [BM, BN, BK] float32 accumulator that
is reduced once at the end; narrow BN (4-8) gives hundreds of programs even for small layers.
A weight of 12 MiB or more (K up to 2048) goes through the persistent variant instead: a few
programs per SM each walk many column blocks, the next block's weight rows loading while the
current one is reduced, so no program waits for its own first load (a 1B gate/up at 91% of copy
bandwidth instead of 77%).

The fused prologue (RMS/layer norm of A, statistics over all of K first) and epilogue (bias,
activation or gated activation of the two halves of B, residual, rounding) are the GEMM's, so
`Gemv` is a drop-in for `Matmul` where `choose_impl` picks it. Block shapes come from a sweep
on an H200 (bench/llm.py --sweep); float32 and the interpreter use the same code path.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..device import interpreting
from .launch import launch
from . import tmath as tm
from .tmath import gdc_launch_dependents, gdc_wait

MAX_M = 8  # above this the tensor-core GEMM reuses each weight tile across enough rows to win


@triton.jit
def _gemv_kernel(a, b, c, bias, res, nw, nb,
                 M, N, K,
                 sam, sak, sbk, sbn, scm, scn, srm, srn,
                 up_off, eps,
                 NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ACT: tl.constexpr, GATED: tl.constexpr, HAS_RES: tl.constexpr, ROUND: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 ONE_CHUNK: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    if PDL:   # the next kernel may start now; it waits for this one before it reads what we write
        gdc_launch_dependents()
    rm = tl.arange(0, BM)
    rn = pid * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mmask = rm < M
    nmask = rn < N
    a_rows = a + rm[:, None].to(tl.int64) * sam                      # [BM, 1]
    w_rows = b + rn[:, None].to(tl.int64) * sbn                      # [BN, 1]: weight rows, K contiguous

    # The first weight chunk: no kernel of the run writes the weight, so with PDL it streams in
    # while the previous kernel finishes; everything after gdc_wait may read its results.
    kmask = rk < K
    wmask = nmask[:, None] & kmask[None, :]
    w = tl.load(w_rows + rk[None, :] * sbk, mask=wmask, other=0.0)
    if GATED:
        u = tl.load(w_rows + up_off * sbn + rk[None, :] * sbk, mask=wmask, other=0.0)
    if PDL:
        gdc_wait()
    # the epilogue's operands load now, in the shadow of the weight stream, not after the reduction
    cmask = mmask[:, None] & nmask[None, :]
    if HAS_RES:
        r = tl.load(res + rm[:, None].to(tl.int64) * srm + rn[None, :] * srn, mask=cmask, other=0.0)
    if HAS_BIAS:
        bv = tl.load(bias + rn, mask=nmask, other=0.0)

    if NORM != "none" and not ONE_CHUNK:  # row statistics over all of K first
        mean, rstd = tm.row_norm_stats(a_rows, sak, mmask, K, eps, NORM, BM, BK)

    x = tl.load(a_rows + rk[None, :] * sak, mask=mmask[:, None] & kmask[None, :], other=0.0)
    if NORM != "none":
        if ONE_CHUNK:   # the row is all in this tile: its statistics without a second read
            mean, rstd = tm.tile_norm_stats(x, K, eps, NORM)
        x = tm.norm_tile(x, mean, rstd, nw, nb, rk, kmask, UNIT_OFFSET, HAS_NORM_BIAS).to(DOT_DTYPE)
    x = x.to(tl.float32)[:, None, :]                                 # [BM, 1, BK]
    acc = x * w.to(tl.float32)[None, :, :]
    if GATED:
        acc_up = x * u.to(tl.float32)[None, :, :]
    for k0 in range(BK, K, BK):
        kk = k0 + rk
        kmask = kk < K
        x = tl.load(a_rows + kk[None, :] * sak, mask=mmask[:, None] & kmask[None, :], other=0.0)
        if NORM != "none":
            x = tm.norm_tile(x, mean, rstd, nw, nb, kk, kmask, UNIT_OFFSET, HAS_NORM_BIAS).to(DOT_DTYPE)
        x = x.to(tl.float32)[:, None, :]                             # [BM, 1, BK]
        wmask = nmask[:, None] & kmask[None, :]
        w = tl.load(w_rows + kk[None, :] * sbk, mask=wmask, other=0.0)
        acc += x * w.to(tl.float32)[None, :, :]
        if GATED:
            u = tl.load(w_rows + up_off * sbn + kk[None, :] * sbk, mask=wmask, other=0.0)
            acc_up += x * u.to(tl.float32)[None, :, :]

    y = tl.sum(acc, 2)                                               # [BM, BN]
    if HAS_BIAS:
        y += bv.to(tl.float32)[None, :]
    if GATED:
        y = tm.epilogue_activation(y, tl.sum(acc_up, 2), ACT, GATED)
    else:
        y = tm.epilogue_activation(y, y, ACT, GATED)
    if HAS_RES:
        y += r.to(tl.float32)
    if ROUND:
        y = y.to(DOT_DTYPE).to(tl.float32)
    tl.store(c + rm[:, None].to(tl.int64) * scm + rn[None, :] * scn, y.to(c.dtype.element_ty), mask=cmask)


@triton.jit
def _finish_block(y, y_up, c, bias, res, rm, rn, mmask, nmask, scm, scn, srm, srn,
                  HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, HAS_RES: tl.constexpr,
                  ROUND: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """A [BM, BN] block of products through the epilogue (bias, activation, residual, rounding) into C."""
    cmask = mmask[:, None] & nmask[None, :]
    if HAS_BIAS:
        y += tl.load(bias + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    y = tm.epilogue_activation(y, y_up, ACT, GATED)
    if HAS_RES:
        y += tl.load(res + rm[:, None].to(tl.int64) * srm + rn[None, :] * srn, mask=cmask, other=0.0).to(tl.float32)
    if ROUND:
        y = y.to(DOT_DTYPE).to(tl.float32)
    tl.store(c + rm[:, None].to(tl.int64) * scm + rn[None, :] * scn, y.to(c.dtype.element_ty), mask=cmask)


@triton.jit
def _weight_rows(b, rn, rk, kmask, N, sbk, sbn, up_off, GATED: tl.constexpr):
    """Weight rows `rn` (all of K), and for a gated layer the matching rows of the up half (else
    the same tile); rows past N load as zeros."""
    mask = (rn < N)[:, None] & kmask[None, :]
    row = rn[:, None].to(tl.int64)
    w = tl.load(b + row * sbn + rk[None, :] * sbk, mask=mask, other=0.0)
    u = w
    if GATED:
        u = tl.load(b + (row + up_off) * sbn + rk[None, :] * sbk, mask=mask, other=0.0)
    return w, u


@triton.jit
def _gemv_stream_kernel(a, b, c, bias, res, nw, nb,
                        M, N, K,
                        sam, sak, sbk, sbn, scm, scn, srm, srn,
                        up_off, eps,
                        NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, HAS_NORM_BIAS: tl.constexpr,
                        HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, HAS_RES: tl.constexpr,
                        ROUND: tl.constexpr, DOT_DTYPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr, PDL: tl.constexpr):
    """`_gemv_kernel` for K <= BK as a persistent loop: a grid of a few programs per SM walks the
    column blocks (pid, pid + programs, ...), loading the next block's weight rows before it reduces
    the current one, so every program always has a weight tile in flight; A is normalized once per
    program, not once per block."""
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    if PDL:
        gdc_launch_dependents()
    rm = tl.arange(0, BM)
    rk = tl.arange(0, BK)
    rb = tl.arange(0, BN)
    mmask = rm < M
    kmask = rk < K
    w, u = _weight_rows(b, pid * BN + rb, rk, kmask, N, sbk, sbn, up_off, GATED)
    if PDL:
        gdc_wait()
    x = tl.load(a + rm[:, None].to(tl.int64) * sam + rk[None, :] * sak, mask=mmask[:, None] & kmask[None, :], other=0.0)
    if NORM != "none":
        mean, rstd = tm.tile_norm_stats(x, K, eps, NORM)
        x = tm.norm_tile(x, mean, rstd, nw, nb, rk, kmask, UNIT_OFFSET, HAS_NORM_BIAS).to(DOT_DTYPE)
    x = x.to(tl.float32)[:, None, :]                                 # [BM, 1, BK]
    for t in range(pid, tl.cdiv(N, BN), step):
        rn = t * BN + rb
        # the next block's rows, in flight while this one is reduced
        w_next, u_next = _weight_rows(b, rn + step * BN, rk, kmask, N, sbk, sbn, up_off, GATED)
        y = tl.sum(x * w.to(tl.float32)[None, :, :], 2)             # [BM, BN]
        y_up = y
        if GATED:
            y_up = tl.sum(x * u.to(tl.float32)[None, :, :], 2)
        _finish_block(y, y_up, c, bias, res, rm, rn, mmask, rn < N, scm, scn, srm, srn,
                      HAS_BIAS, ACT, GATED, HAS_RES, ROUND, DOT_DTYPE)
        w = w_next
        u = u_next


def config(M: int, N: int, K: int, dtype: torch.dtype, gated: bool = False, norm: bool = False,
           num_sms: int = 132) -> dict:
    """Block shape from H200 sweeps (bench/gemv_sweep.py: back-to-back launches in a CUDA graph, 1B
    decode shapes at M = 1): BK = 1024 (2048 without a norm prologue) so each of 128 threads loads
    16 or 32 contiguous bytes of a weight row; BN 4 from 2048 columns (2 below, 8 for a vocabulary
    head). The 1B layers: qkv 7.1 -> 5.4 us, down 11.5 -> 10.8 us. BM*BN*BK float32 accumulators
    stay within 8192 per program (BK halves for more rows)."""
    bm = triton.next_power_of_2(max(M, 1))
    variant = os.environ.get("KILN_GEMV", "")   # "stream" or "blocks" forces one kernel (tests, experiments)
    if variant == "stream" and K <= 4096:
        bk = triton.next_power_of_2(K)
        if interpreting():   # 2 programs over 2-wide blocks: each walks several
            return dict(BM=bm, BN=2, BK=bk, num_warps=4, STREAM=2)
        return dict(BM=bm, BN=max(1, min(4, 8192 // (bm * bk))), BK=bk, num_warps=4, STREAM=4 * num_sms)
    if interpreting():
        return dict(BM=bm, BN=4, BK=32, num_warps=4)
    if N >= 16384 and K < 1024 and bm == 1:
        # a vocabulary head over a narrow hidden size (SmolLM2-135M: K 576, 44% of a 1024-wide
        # chunk idle): 64 rows in 64-wide steps, 27.8 -> 22.6 us (bench/gemv_sweep.py --only head)
        return dict(BM=bm, BN=64, BK=64, num_warps=4)
    weight_bytes = N * (2 if gated else 1) * K * dtype.itemsize
    if bm == 1 and K <= 2048 and dtype.itemsize == 2 and weight_bytes >= 12 << 20 and variant != "blocks":
        # a weight of 12 MiB and more streams best through the persistent kernel, 4 programs an SM
        # (bench/gemv_sweep.py --stream 1,2,4,8, H200): 1B qkv 5.4 -> 4.6 us, gate_up 21.7 -> 18.4 us
        # (91% of copy bandwidth), head 126 -> 121 us; below that (the 1B o-proj, every 135M layer)
        # no faster, and K > 2048 (down) not either in BK-wide chunks
        return dict(BM=1, BN=2 if gated else 4, BK=triton.next_power_of_2(K), num_warps=4, STREAM=4 * num_sms)
    bn = 8 if N >= 16384 else (4 if gated or N >= 2048 else 2)
    # without a norm prologue a layer of K >= 2048 streams best in 2048-wide chunks (bench/gemv_sweep.py)
    bk = min(1024 if norm or gated else 2048, triton.next_power_of_2(K))
    while bm * bn * bk > 8192 and bk > 128:
        bk //= 2
    while bm * bn * bk > 8192 and bn > 1:
        bn //= 2
    return dict(BM=bm, BN=bn, BK=bk, num_warps=4)


class Gemv:
    """`Matmul`'s contract for one product (batch 1) of M <= MAX_M rows."""

    archetype = "matmul"

    def __init__(self, M: int, N: int, K: int, dtype: torch.dtype, *, norm: str = "none", eps: float = 1e-5,
                 unit_offset: bool = False, has_bias: bool = False, activation: str = "none",
                 has_residual: bool = False, round_out: bool = False, has_norm_bias: bool = False,
                 cfg: dict | None = None, early_launch: bool = False, num_sms: int = 132):
        """early_launch: launch before the previous kernel ends (programmatic dependent launch, see
        `device.programmatic_launch`); only for a weight that no kernel of the run writes."""
        from .matmul import GATED, fused_flags

        if M > MAX_M:
            raise ValueError(f"Gemv takes at most {MAX_M} rows, got {M}")
        self.M, self.N, self.K = M, N, K
        self.cfg = cfg or config(M, N, K, dtype, gated=activation in GATED, norm=norm != "none", num_sms=num_sms)
        flags = fused_flags(dtype, norm=norm, unit_offset=unit_offset, has_norm_bias=has_norm_bias, has_bias=has_bias,
                            activation=activation, has_residual=has_residual, round_out=round_out)
        self.flags = {k: flags[k] for k in ("NORM", "UNIT_OFFSET", "HAS_NORM_BIAS", "HAS_BIAS", "ACT", "GATED",
                                           "HAS_RES", "ROUND", "DOT_DTYPE")}
        self.eps = float(eps)
        blocks = triton.cdiv(N, self.cfg["BN"])
        if self.cfg.get("STREAM") and self.cfg["BK"] < K:
            raise ValueError(f"the streaming GEMV holds all of K in one chunk: BK {self.cfg['BK']} < K {K}")
        self.grid = (min(blocks, self.cfg["STREAM"]) if self.cfg.get("STREAM") else blocks,)
        self.pdl = bool(early_launch)

    def __call__(self, a, b, c, bias=None, residual=None, norm_weight=None, norm_bias=None) -> None:
        """a [.., M, K], b [.., K, N (2N gated)], c and residual [.., M, N]: one product (leading dims 1)."""
        a, b, c = _2d(a), _2d(b), _2d(c)
        res = _2d(residual) if residual is not None else c
        cfg = self.cfg
        # the persistent kernel always holds all of K in one chunk; the block kernel says whether it does
        kernel, chunk = (_gemv_stream_kernel, {}) if cfg.get("STREAM") else \
            (_gemv_kernel, {"ONE_CHUNK": self.K <= cfg["BK"]})
        launch(kernel, self.grid,
               a, b, c, bias if bias is not None else c, res,
               norm_weight if norm_weight is not None else c, norm_bias if norm_bias is not None else c,
               self.M, self.N, self.K,
               a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
               res.stride(0), res.stride(1), self.N, self.eps,
               BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"], early_launch=self.pdl,
               **chunk, **self.flags)


def _2d(t: torch.Tensor) -> torch.Tensor:
    """The last two dims of a view whose leading dims are all 1 (no copy)."""
    return t[(0,) * (t.dim() - 2)] if t.dim() > 2 else t
