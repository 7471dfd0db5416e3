"""Softmax cross-entropy over a vocabulary, row by row, never storing probabilities.

Forward (`SoftmaxCrossEntropy`): one program per row walks the row in chunks of BLOCK columns with
an online max and sum of exponentials per lane (combined once at the end, as the chunked softmax in
`reduction.py` does), picking the label's logit on the way (and summing the row for label
smoothing); it writes the row's loss and log-sum-exp, in float32 (float64 for float64 logits).
Backward (`SoftmaxCrossEntropyBackward`): one program per row recomputes p = exp(x - lse) chunk by
chunk and writes p (d + dlse) - ((1 - e) onehot + e / V) d straight in the logits' dtype, so no
float32 [rows, V] tensor exists for half logits.

Logits are read through (outer, inner) row strides, so a slice of [B, S, V] logits along S (the
next-token positions of an LM) is read in place. A label outside [0, V) that is not ignore_index
makes that row's loss and gradient NaN (the NumPy reference raises instead; checking labels on the
host would cost a device sync per step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import tmath as tm
from .launch import launch
from .pointwise import collapse
from .reduction import acc_type, next_pow2

BLOCK = 4096   # columns per chunk: 16 float32 per thread at 8 warps, per accumulator


def _warps(block: int) -> int:
    return 1 if block <= 256 else 2 if block <= 1024 else 4 if block <= 2048 else 8


def row_layout(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(inner, outer stride, inner stride) addressing row r of x [..., V] at (r // inner) * outer
    stride + (r % inner) * inner stride, or None when x's columns are strided or its leading dims do
    not collapse to two (the caller copies it contiguous)."""
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        return None
    shape, (strides,) = collapse(tuple(x.shape[:-1]), [tuple(x.stride()[:-1])])
    if len(shape) == 1:
        return shape[0], 0, strides[0]
    if len(shape) == 2:
        return shape[1], strides[0], strides[1]
    return None


@triton.jit
def _row_start(row, INNER, s_outer, s_inner):
    return (row // INNER) * s_outer + (row % INNER) * s_inner


@triton.jit
def _cross_entropy_fwd_kernel(x, labels, loss, lse, V, INNER, sx_outer, sx_inner, s_lab, ignore_index,
                              SMOOTHING: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xrow = x + _row_start(row, INNER, sx_outer, sx_inner)
    label = tl.load(labels + row * s_lab).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mx = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    picked = tl.zeros([BLOCK], ACC)
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, V, BLOCK):
        c = start + cols
        m = c < V
        v = tl.load(xrow + c, mask=m, other=float("-inf")).to(ACC)
        mx, s = tm.online_max_sum(mx, s, v, m)
        picked += tl.where(c == label, v, 0.0)
        if SMOOTHING != 0.0:
            total += tl.where(m, v, 0.0)
    gmax_safe, total_exp = tm.lanes_max_sum(mx, s)
    row_lse = tl.log(total_exp) + gmax_safe
    target = tl.sum(picked, 0)
    if SMOOTHING != 0.0:
        target = (1.0 - SMOOTHING) * target + SMOOTHING * (tl.sum(total, 0) / V)
    valid = label != ignore_index
    bad = valid & ((label < 0) | (label >= V))
    out = tl.where(valid, row_lse - target, 0.0)
    out = tl.where(bad, float("nan"), out)
    tl.store(loss + row, out.to(loss.dtype.element_ty))
    tl.store(lse + row, row_lse.to(lse.dtype.element_ty))


@triton.jit
def _cross_entropy_bwd_kernel(x, labels, lse, dloss, dlse, dx, V, INNER, sx_outer, sx_inner, sd_outer, sd_inner,
                              s_lab, s_lse, s_dl, s_dlse, ignore_index, HAS_DLSE: tl.constexpr,
                              SMOOTHING: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xrow = x + _row_start(row, INNER, sx_outer, sx_inner)
    drow = dx + _row_start(row, INNER, sd_outer, sd_inner)
    label = tl.load(labels + row * s_lab).to(tl.int64)
    valid = label != ignore_index
    bad = valid & ((label < 0) | (label >= V))
    d = tl.where(valid, tl.load(dloss + row * s_dl).to(ACC), 0.0)
    r = d
    if HAS_DLSE:
        r = r + tl.load(dlse + row * s_dlse).to(ACC)
    row_lse = tl.load(lse + row * s_lse).to(ACC)
    hit = (1.0 - SMOOTHING) * d
    uniform = d * SMOOTHING / V
    cols = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        c = start + cols
        m = c < V
        v = tl.load(xrow + c, mask=m, other=0.0).to(ACC)
        g = tl.exp(v - row_lse) * r - tl.where(c == label, hit, 0.0)
        if SMOOTHING != 0.0:
            g = g - uniform
        g = tl.where(bad, float("nan"), g)
        tl.store(drow + c, g.to(dx.dtype.element_ty), mask=m)


def _stride(t: torch.Tensor | None) -> int:
    return t.stride(0) if t is not None else 0


class _RowKernel:
    archetype = "reduction"

    def __init__(self, x: torch.Tensor, layout: tuple[int, int, int], *, ignore_index: int, label_smoothing: float,
                 block: int | None = None):
        self.V = x.shape[-1]
        self.rows = x.numel() // max(self.V, 1)
        self.inner, self.s_outer, self.s_inner = layout
        self.block = block if block is not None else min(next_pow2(self.V), BLOCK)
        self.ignore_index, self.smoothing = int(ignore_index), float(label_smoothing)
        self.acc = acc_type(x.dtype)


class SoftmaxCrossEntropy(_RowKernel):
    """Per-row loss and log-sum-exp of logits x [..., V] (rows addressed by `layout`, see row_layout)
    against labels, a flat [rows] view; loss and lse are contiguous [rows]."""

    def __init__(self, x, layout, labels: torch.Tensor, **kw):
        super().__init__(x, layout, **kw)
        self.s_lab = _stride(labels)

    def __call__(self, x, labels, loss, lse) -> None:
        launch(_cross_entropy_fwd_kernel, (self.rows,), x, labels, loss, lse, self.V, self.inner, self.s_outer,
               self.s_inner, self.s_lab, self.ignore_index, SMOOTHING=self.smoothing, BLOCK=self.block,
               ACC=self.acc, num_warps=_warps(self.block))


class SoftmaxCrossEntropyBackward(_RowKernel):
    """dlogits of the rows, written in dx's dtype into a contiguous dx [..., V]; labels, lse, dloss
    and dlse (optional) are flat [rows] views (a broadcast cotangent has stride 0)."""

    def __init__(self, x, layout, labels: torch.Tensor, lse: torch.Tensor, dloss: torch.Tensor,
                 dlse: torch.Tensor | None, **kw):
        super().__init__(x, layout, **kw)
        self.strides = (_stride(labels), _stride(lse), _stride(dloss), _stride(dlse))
        self.has_dlse = dlse is not None

    def __call__(self, x, labels, lse, dloss, dlse, dx) -> None:
        launch(_cross_entropy_bwd_kernel, (self.rows,), x, labels, lse, dloss, dlse if dlse is not None else dloss,
               dx, self.V, self.inner, self.s_outer, self.s_inner, self.inner * self.V, self.V, *self.strides,
               self.ignore_index, HAS_DLSE=self.has_dlse, SMOOTHING=self.smoothing, BLOCK=self.block,
               ACC=self.acc, num_warps=_warps(self.block))
