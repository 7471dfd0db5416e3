"""Reduction archetype: row kernels for softmax / log_softmax, layer_norm and rms_norm (with
an optional fused residual add that also writes the sum), and sum / mean / max / min / argmax.

Rows that fit one block are reduced in registers in a single pass; longer rows loop over
chunks (online max/sum for softmax, sum and sum of squares for the norms). Everything
accumulates in float32 (float64 for float64 input) and rounds once at the store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..device import interpreting
from .launch import launch
from . import tmath as tm

MAX_SINGLE_BLOCK = 16384


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def acc_type(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _warps(block: int) -> int:
    return 1 if block <= 256 else 2 if block <= 1024 else 4 if block <= 4096 else 8


# ---- softmax ----------------------------------------------------------------------------------

@triton.jit
def _softmax_kernel(x, out, R, LOG: tl.constexpr, SINGLE: tl.constexpr, BLOCK: tl.constexpr,
                    ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * R
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        m = cols < R
        v = tl.load(x + base + cols, mask=m, other=float("-inf")).to(ACC)
        mx = tl.max(v, 0)
        mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
        e = tl.where(m, tl.exp(v - mx_safe), 0.0)
        s = tl.sum(e, 0)
        if LOG:
            r = v - mx_safe - tl.log(s)
        else:
            r = e / s
        tl.store(out + base + cols, r.to(out.dtype.element_ty), mask=m)
    else:
        mx = tl.full([BLOCK], float("-inf"), ACC)
        s = tl.zeros([BLOCK], ACC)
        for start in range(0, R, BLOCK):
            m = start + cols < R
            v = tl.load(x + base + start + cols, mask=m, other=float("-inf")).to(ACC)
            mx, s = tm.online_max_sum(mx, s, v, m)
        gmax_safe, total = tm.lanes_max_sum(mx, s)
        for start in range(0, R, BLOCK):
            m = start + cols < R
            v = tl.load(x + base + start + cols, mask=m, other=float("-inf")).to(ACC)
            if LOG:
                r = v - gmax_safe - tl.log(total)
            else:
                r = tl.exp(v - gmax_safe) / total
            tl.store(out + base + start + cols, r.to(out.dtype.element_ty), mask=m)


class Softmax:
    """softmax / log_softmax over the last axis of a contiguous tensor."""

    archetype = "reduction"

    def __init__(self, x: torch.Tensor, out: torch.Tensor, log: bool):
        self.R = x.shape[-1]
        self.rows = x.numel() // max(self.R, 1)
        self.single = self.R <= MAX_SINGLE_BLOCK
        self.block = next_pow2(self.R) if self.single else 4096
        self.log = log
        self.acc = acc_type(x.dtype)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        launch(_softmax_kernel, (self.rows,), x, out, self.R, LOG=self.log, SINGLE=self.single, BLOCK=self.block,
                                      ACC=self.acc, num_warps=_warps(self.block))


# ---- layer_norm / rms_norm (+ residual) --------------------------------------------------------

@triton.jit
def _norm_kernel(x, res, w, b, out, sum_out, R, eps,
                 RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                 UNIT_OFFSET: tl.constexpr, WRITE_SUM: tl.constexpr, SINGLE: tl.constexpr,
                 BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * R
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        m = cols < R
        v = tl.load(x + base + cols, mask=m, other=0.0).to(ACC)
        if HAS_RES:
            v = v + tl.load(res + base + cols, mask=m, other=0.0).to(ACC)
            v = v.to(sum_out.dtype.element_ty).to(ACC)   # the sum is a tensor of x's dtype
            if WRITE_SUM:
                tl.store(sum_out + base + cols, v.to(sum_out.dtype.element_ty), mask=m)
        if RMS:
            rstd = 1.0 / tl.sqrt(tl.sum(v * v, 0) / R + eps)
            y = v * rstd
        else:
            mean = tl.sum(v, 0) / R
            d = tl.where(m, v - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / R + eps)
            y = d * rstd
        if HAS_W:
            wv = tl.load(w + cols, mask=m, other=0.0).to(ACC)
            if UNIT_OFFSET:
                wv = wv + 1.0
            y = y * wv
        if HAS_B:
            y = y + tl.load(b + cols, mask=m, other=0.0).to(ACC)
        tl.store(out + base + cols, y.to(out.dtype.element_ty), mask=m)
    else:
        s1 = tl.zeros([BLOCK], ACC)
        s2 = tl.zeros([BLOCK], ACC)
        for start in range(0, R, BLOCK):
            m = start + cols < R
            v = tl.load(x + base + start + cols, mask=m, other=0.0).to(ACC)
            if HAS_RES:
                v = v + tl.load(res + base + start + cols, mask=m, other=0.0).to(ACC)
                v = v.to(sum_out.dtype.element_ty).to(ACC)
                if WRITE_SUM:
                    tl.store(sum_out + base + start + cols, v.to(sum_out.dtype.element_ty), mask=m)
            s1 += v
            s2 += v * v
        mean = tl.sum(s1, 0) / R
        if RMS:
            rstd = 1.0 / tl.sqrt(tl.sum(s2, 0) / R + eps)
            mean = 0.0
        else:
            rstd = 1.0 / tl.sqrt(tl.maximum(tl.sum(s2, 0) / R - mean * mean, 0.0) + eps)
        for start in range(0, R, BLOCK):
            m = start + cols < R
            v = tl.load(x + base + start + cols, mask=m, other=0.0).to(ACC)
            if HAS_RES:
                v = v + tl.load(res + base + start + cols, mask=m, other=0.0).to(ACC)
                v = v.to(sum_out.dtype.element_ty).to(ACC)
            y = (v - mean) * rstd
            if HAS_W:
                wv = tl.load(w + start + cols, mask=m, other=0.0).to(ACC)
                if UNIT_OFFSET:
                    wv = wv + 1.0
                y = y * wv
            if HAS_B:
                y = y + tl.load(b + start + cols, mask=m, other=0.0).to(ACC)
            tl.store(out + base + start + cols, y.to(out.dtype.element_ty), mask=m)


class Norm:
    """rms_norm / layer_norm over the last axis; with `residual`, normalizes x + residual and
    can also write that sum (the residual stream of a transformer block) in the same pass."""

    archetype = "reduction"

    def __init__(self, x: torch.Tensor, *, rms: bool, eps: float, has_residual: bool, has_weight: bool,
                 has_bias: bool, unit_offset: bool = False, write_sum: bool = False):
        self.R = x.shape[-1]
        self.rows = x.numel() // max(self.R, 1)
        self.single = self.R <= MAX_SINGLE_BLOCK
        self.block = next_pow2(self.R) if self.single else 4096
        self.flags = dict(RMS=rms, HAS_RES=has_residual, HAS_W=has_weight, HAS_B=has_bias,
                          UNIT_OFFSET=unit_offset, WRITE_SUM=write_sum)
        self.eps = float(eps)
        self.acc = acc_type(x.dtype)

    def __call__(self, x, residual, weight, bias, out, sum_out=None) -> None:
        dummy = out
        launch(_norm_kernel, (self.rows,), x, residual if residual is not None else dummy,
                                   weight if weight is not None else dummy, bias if bias is not None else dummy,
                                   out, sum_out if sum_out is not None else out, self.R, self.eps,
                                   SINGLE=self.single, BLOCK=self.block, ACC=self.acc,
                                   num_warps=_warps(self.block), **self.flags)


# ---- sum / mean / max / min / argmax over a block of consecutive axes ---------------------------

@triton.jit
def _reduce_kernel(x, out, R, INNER, CHUNK, DENOM, OP: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_I: tl.constexpr, ACC: tl.constexpr):
    """Program (outer, inner block, split): OP over rows [split * CHUNK, (split + 1) * CHUNK) of
    x[outer, :R, inner], stored at out[outer, split, inner]; a mean divides by DENOM."""
    outer = tl.program_id(0).to(tl.int64)
    ib = tl.program_id(1)
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    row0 = split * CHUNK
    row1 = tl.minimum(R, row0 + CHUNK)
    r = tl.arange(0, BLOCK_R)[:, None]
    i = ib * BLOCK_I + tl.arange(0, BLOCK_I)[None, :]
    im = i < INNER
    base = outer * R * INNER
    if OP == "max" or OP == "argmax":
        acc = tl.full([BLOCK_R, BLOCK_I], float("-inf"), ACC)
    elif OP == "min":
        acc = tl.full([BLOCK_R, BLOCK_I], float("inf"), ACC)
    else:
        acc = tl.zeros([BLOCK_R, BLOCK_I], ACC)
    nan = tl.zeros([BLOCK_R, BLOCK_I], tl.int1)
    best_idx = tl.zeros([BLOCK_R, BLOCK_I], tl.int64)
    for start in range(row0, row1, BLOCK_R):
        rr = start + r
        m = (rr < row1) & im
        if OP == "max" or OP == "argmax":
            v = tl.load(x + base + rr * INNER + i, mask=m, other=float("-inf")).to(ACC)
        elif OP == "min":
            v = tl.load(x + base + rr * INNER + i, mask=m, other=float("inf")).to(ACC)
        else:
            v = tl.load(x + base + rr * INNER + i, mask=m, other=0).to(ACC)
        if OP == "sum" or OP == "mean":
            acc += v
        elif OP == "max":
            nan = nan | (v != v)
            acc = tl.maximum(acc, v)
        elif OP == "min":
            nan = nan | (v != v)
            acc = tl.minimum(acc, v)
        else:  # argmax: NaN counts as the largest value; the first maximum wins
            key = tl.where(v != v, float("inf"), v)
            better = key > acc
            acc = tl.where(better, key, acc)
            best_idx = tl.where(better, rr.to(tl.int64) + tl.zeros([BLOCK_R, BLOCK_I], tl.int64), best_idx)
    oi = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    om = oi < INNER
    if OP == "sum":
        res = tl.sum(acc, 0)
    elif OP == "mean":
        res = tl.sum(acc, 0) / DENOM
    elif OP == "max":
        res = tl.where(tl.max(nan.to(tl.int32), 0) > 0, float("nan"), tl.max(acc, 0))
    elif OP == "min":
        res = tl.where(tl.max(nan.to(tl.int32), 0) > 0, float("nan"), tl.min(acc, 0))
    if OP == "argmax":
        top = tl.max(acc, 0)
        res = tl.min(tl.where(acc == top[None, :], best_idx, R), 0)
    tl.store(out + (outer * splits + split) * INNER + oi, res.to(out.dtype.element_ty), mask=om)


REDUCE_OPS = ("sum", "mean", "max", "min", "argmax")

# An argmax over a long axis with few rows (greedy decoding over a vocabulary) splits the axis over
# this many rows per program and combines the chunks' winners in a second tiny launch: one program
# walking 128K logits alone took 94 us on an H200, a tenth of a 1B model's decode step.
ARGMAX_CHUNK = 4096

# A sum / mean / max / min with too few (outer, inner block) programs to fill the GPU splits its rows
# over a third grid axis and reduces the float32 partials in a second launch: a full reduction of a
# 576 x 49152 gradient was one program walking 28M values (the global gradient norm of a 135M model's
# training step took half of the step).
SPLIT_TARGET_PROGRAMS = 4   # per SM
SPLIT_MIN_BLOCKS = 4        # BLOCK_R row blocks per split at least


@triton.jit
def _argmax_chunks_kernel(x, best_val, best_idx, R, INNER, CHUNK, BLOCK_R: tl.constexpr):
    """Program (outer, chunk): the first maximum of x[outer, chunk's rows, 0] (INNER == 1), NaN largest."""
    outer = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    nchunks = tl.num_programs(1)
    r = tl.arange(0, BLOCK_R)
    acc = tl.full([BLOCK_R], float("-inf"), tl.float32)
    idx = tl.zeros([BLOCK_R], tl.int64)
    for start in range(c * CHUNK, tl.minimum(R, (c + 1) * CHUNK), BLOCK_R):
        rr = start + r
        v = tl.load(x + outer * R + rr, mask=(rr < R) & (rr < (c + 1) * CHUNK), other=float("-inf")).to(tl.float32)
        key = tl.where(v != v, float("inf"), v)
        better = key > acc
        acc = tl.where(better, key, acc)
        idx = tl.where(better, rr.to(tl.int64), idx)
    top = tl.max(acc, 0)
    first = tl.min(tl.where(acc == top, idx, R), 0)
    tl.store(best_val + outer * nchunks + c, top)
    tl.store(best_idx + outer * nchunks + c, first)


@triton.jit
def _argmax_combine_kernel(best_val, best_idx, out, NCHUNKS, BLOCK_C: tl.constexpr):
    """Row `outer`: the winner of the earliest chunk holding the top value (the first maximum overall)."""
    outer = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    m = c < NCHUNKS
    v = tl.load(best_val + outer * NCHUNKS + c, mask=m, other=float("-inf"))
    i = tl.load(best_idx + outer * NCHUNKS + c, mask=m, other=0)
    top = tl.max(v, 0)
    first = tl.min(tl.where((v == top) & m, c, BLOCK_C), 0)
    tl.store(out + outer, tl.sum(tl.where(c == first, i, 0), 0).to(out.dtype.element_ty))


class Reduce:
    """Reduces a contiguous tensor viewed as [outer, R, inner] over R."""

    archetype = "reduction"

    def __init__(self, op: str, outer: int, R: int, inner: int, dtype: torch.dtype, num_sms: int = 132,
                 block_r: int | None = None):
        """block_r overrides the row block (tests use it to split small reductions)."""
        if op not in REDUCE_OPS:
            raise ValueError(f"reduction {op!r} is not one of {REDUCE_OPS}")
        self.op, self.outer, self.R, self.inner = op, outer, R, inner
        self.block_i = min(next_pow2(inner), 64)
        cap = 1024 if not interpreting() else 4096
        self.block_r = block_r or max(2, min(next_pow2(R), max(2, cap // self.block_i)))
        if not dtype.is_floating_point and op != "sum":
            raise NotImplementedError(f"Triton {op} of {dtype} tensors (integer max/min/argmax use torch)")
        self.acc = tl.float64 if dtype == torch.float64 else tl.float32 if dtype.is_floating_point else tl.int64
        self.partial_dtype = {tl.float64: torch.float64, tl.float32: torch.float32, tl.int64: torch.int64}[self.acc]
        self.chunks = 1
        if op == "argmax" and inner == 1 and dtype != torch.float64 and R > ARGMAX_CHUNK and outer < 64:
            self.chunks = triton.cdiv(R, ARGMAX_CHUNK)
        self.splits, self.chunk = 1, R
        programs = outer * triton.cdiv(inner, self.block_i)
        if op != "argmax" and programs < SPLIT_TARGET_PROGRAMS * num_sms:
            rows = max(SPLIT_MIN_BLOCKS * self.block_r,
                       triton.cdiv(R, triton.cdiv(SPLIT_TARGET_PROGRAMS * num_sms, programs)))
            self.chunk = triton.cdiv(rows, self.block_r) * self.block_r
            self.splits = triton.cdiv(R, self.chunk)
            if self.splits == 1:
                self.chunk = R

    def scratch(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """The split argmax's per-chunk winners (value, index); a split reduction's partials."""
        if self.chunks > 1:
            return [((self.outer, self.chunks), torch.float32), ((self.outer, self.chunks), torch.int64)]
        if self.splits > 1:
            return [((self.outer, self.splits, self.inner), self.partial_dtype)]
        return []

    def __call__(self, x, out, *scratch) -> None:
        if self.chunks > 1:
            vals, idx = scratch
            launch(_argmax_chunks_kernel, (self.outer, self.chunks), x, vals, idx, self.R, 1, ARGMAX_CHUNK,
                   BLOCK_R=1024 if not interpreting() else 4096, num_warps=4)
            launch(_argmax_combine_kernel, (self.outer,), vals, idx, out, self.chunks,
                   BLOCK_C=max(2, next_pow2(self.chunks)), num_warps=1)
            return
        grid = (self.outer, triton.cdiv(self.inner, self.block_i))
        if self.splits == 1:
            launch(_reduce_kernel, grid + (1,), x, out, self.R, self.inner, self.R, float(self.R), OP=self.op,
                   BLOCK_R=self.block_r, BLOCK_I=self.block_i, ACC=self.acc, num_warps=4)
            return
        (partial,) = scratch
        first = "sum" if self.op == "mean" else self.op
        launch(_reduce_kernel, grid + (self.splits,), x, partial, self.R, self.inner, self.chunk, 1.0,
               OP=first, BLOCK_R=self.block_r, BLOCK_I=self.block_i, ACC=self.acc, num_warps=4)
        block_s = max(2, min(next_pow2(self.splits), max(2, 1024 // self.block_i)))
        launch(_reduce_kernel, grid + (1,), partial, out, self.splits, self.inner, self.splits, float(self.R),
               OP=self.op, BLOCK_R=block_s, BLOCK_I=self.block_i, ACC=self.acc, num_warps=4)
