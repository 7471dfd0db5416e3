"""rms_norm's backward in one pass over x and dy (plus a short column sum for the weight), with
the add of the residual stream's gradient as an optional epilogue.

In primitives it took eight launches per norm (the statistics, dx's row mean, a split sum for
dweight, the casts), 61 norms in a 135M Llama's training step. Here each program owns every
P-th row: it recomputes rstd from x, writes dx, and accumulates dy * xhat over its rows in
float32; with weight_grad a second launch sums the programs' [P, D] partials into dweight.
Rows must fit one block (D <= MAX_SINGLE_BLOCK); longer rows are declined.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..device import interpreting
from .launch import launch
from .reduction import MAX_SINGLE_BLOCK, _warps, acc_type, next_pow2


@triton.jit
def _rows_kernel(x, w, dy, res, dx, partial, ROWS, ROWS_PER, D, eps, HAS_W: tl.constexpr, UNIT_OFFSET: tl.constexpr,
                 WEIGHT_GRAD: tl.constexpr, HAS_RES: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    in_row = cols < D
    if HAS_W:
        wv = tl.load(w + cols, mask=in_row, other=0.0).to(ACC)
        if UNIT_OFFSET:
            wv = wv + 1.0
    dw = tl.zeros([BLOCK], ACC)
    for i in range(ROWS_PER):
        row = pid + i * programs
        m = in_row & (row < ROWS)
        base = row * D
        v = tl.load(x + base + cols, mask=m, other=0.0).to(ACC)
        g = tl.load(dy + base + cols, mask=m, other=0.0).to(ACC)
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, 0) / D + eps)
        xhat = v * rstd
        if HAS_W:
            d_xhat = g * wv
        else:
            d_xhat = g
        c = tl.sum(d_xhat * xhat, 0) / D
        d = rstd * (d_xhat - xhat * c)
        if HAS_RES:   # the gradient already on x (the residual stream's): dx rounds once, then the sum
            d = d.to(dx.dtype.element_ty).to(ACC) + tl.load(res + base + cols, mask=m, other=0.0).to(ACC)
        tl.store(dx + base + cols, d.to(dx.dtype.element_ty), mask=m)
        if WEIGHT_GRAD:
            dw += g * xhat
    if WEIGHT_GRAD:
        tl.store(partial + pid * D + cols, dw, mask=in_row)


@triton.jit
def _columns_kernel(partial, out, P, D, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    acc = tl.zeros([BLOCK_P, BLOCK_D], ACC)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        acc += tl.load(partial + rows[:, None] * D + cols[None, :], mask=(rows[:, None] < P) & cm[None, :], other=0.0)
    tl.store(out + cols, tl.sum(acc, 0).to(out.dtype.element_ty), mask=cm)


class RmsNormBackward:
    """`rms_norm_backward(x, weight?, dy)` over contiguous x and dy: dx, and dweight with weight_grad."""

    archetype = "reduction"

    def __init__(self, x: torch.Tensor, *, eps: float, has_weight: bool, add_unit_offset: bool, weight_grad: bool,
                 num_sms: int, has_residual: bool = False):
        self.D = x.shape[-1]
        if self.D > MAX_SINGLE_BLOCK:
            raise NotImplementedError(f"rms_norm_backward rows of {self.D} > {MAX_SINGLE_BLOCK}")
        self.rows = x.numel() // max(self.D, 1)
        self.block = next_pow2(self.D)
        # a few programs per SM: enough rows each that the weight partials stay small
        self.programs = max(1, min(self.rows, (4 if not interpreting() else 1) * num_sms))
        self.flags = dict(HAS_W=has_weight, UNIT_OFFSET=add_unit_offset, WEIGHT_GRAD=weight_grad, HAS_RES=has_residual)
        self.eps = float(eps)
        self.acc = acc_type(x.dtype)

    def scratch(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """The programs' weight-gradient partials."""
        if not self.flags["WEIGHT_GRAD"]:
            return []
        return [((self.programs, self.D), torch.float64 if self.acc == tl.float64 else torch.float32)]

    def __call__(self, x, weight, dy, dx, dweight=None, partial=None, residual=None) -> None:
        """`residual`: added to dx (with has_residual), which is then stored."""
        launch(_rows_kernel, (self.programs,), x, weight if weight is not None else x, dy,
               residual if residual is not None else dy, dx,
               partial if partial is not None else dx, self.rows, triton.cdiv(self.rows, self.programs), self.D,
               self.eps, BLOCK=self.block, ACC=self.acc, num_warps=_warps(self.block), **self.flags)
        if self.flags["WEIGHT_GRAD"]:
            block_d = min(64, self.block)
            launch(_columns_kernel, (triton.cdiv(self.D, block_d),), partial, dweight, self.programs, self.D,
                   BLOCK_P=32, BLOCK_D=block_d, ACC=self.acc, num_warps=4)
