"""The sum of squares of many tensors in two launches: a training step's gradient norm.

Reduced one tensor at a time, a 135M Llama's 182 gradients took a squaring kernel and a
(split) reduction each, ~360 launches of a few microseconds. Here the first launch gives every
program STEPS * BLOCK elements of one tensor (a table of program -> (tensor, start) and one of
the tensors' addresses, as the multi-tensor pointwise kernel has), one launch per dtype, each
writing one partial per program; the second sums the partials. Each program accumulates in
float32 (float64 for float64 tensors); partials and the total are float64.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from ..device import interpreting
from .launch import launch
from .pointwise import block_table

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


@triton.jit
def _partial_sums_kernel(ptrs, blk_tensor, blk_start, numels, partial, DTYPE: tl.constexpr, ACC: tl.constexpr,
                         BLOCK: tl.constexpr, STEPS: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(blk_tensor + pid)
    start = tl.load(blk_start + pid)
    n = tl.load(numels + t)
    x = tl.load(ptrs + t).to(tl.pointer_type(DTYPE))
    acc = tl.zeros([BLOCK], ACC)
    for i in tl.static_range(STEPS):
        offs = start + i * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        v = tl.load(x + offs, mask=offs < n, other=0.0).to(ACC)
        acc += v * v
    tl.store(partial + pid, tl.sum(acc, 0).to(tl.float64))


@triton.jit
def _total_kernel(partial, out, N, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float64)
    for s in range(0, N, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        acc += tl.load(partial + offs, mask=offs < N, other=0.0)
    tl.store(out, tl.sum(acc, 0).to(out.dtype.element_ty))


class SumSquares:
    """`sum_squares(xs)` over contiguous tensors: their dtypes' groups, a launch each, then the total."""

    archetype = "reduction"

    def __init__(self, metas: list[torch.Tensor]):
        bad = [i for i, m in enumerate(metas) if m.dtype not in _TL or not m.is_contiguous()]
        if bad:
            raise ValueError(f"sum_squares: inputs {bad} are not contiguous float tensors")
        self.block, self.steps = (1024, 8) if not interpreting() else (64, 2)
        per_program = self.block * self.steps
        self.groups = {}    # dtype -> (input positions, program -> tensor, program -> start, numels)
        for dtype in dict.fromkeys(m.dtype for m in metas):
            idx = [i for i, m in enumerate(metas) if m.dtype == dtype]
            numels = [metas[i].numel() for i in idx]
            self.groups[dtype] = (idx, *block_table(numels, per_program), np.asarray(numels, np.int64))
        self.programs = sum(len(g[1]) for g in self.groups.values())
        self._tables = None

    def scratch(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """One float64 partial per program of every group."""
        return [((max(self.programs, 1),), torch.float64)]

    def _tables_for(self, xs: list[torch.Tensor]):
        """Device tables, built on the first call and again only when the tensors move (a CUDA
        graph replays them)."""
        ptrs = tuple(x.data_ptr() for x in xs)
        if self._tables is None or self._tables[0] != ptrs:
            dev = xs[0].device
            tables = {dt: (torch.tensor([ptrs[i] for i in idx], dtype=torch.int64, device=dev),
                           *(torch.from_numpy(a).to(dev) for a in (tensor, start, numels)))
                      for dt, (idx, tensor, start, numels) in self.groups.items()}
            self._tables = (ptrs, tables)
        return self._tables[1]

    def __call__(self, xs: list[torch.Tensor], out: torch.Tensor, partial: torch.Tensor) -> None:
        offset = 0
        for dtype, (ptr_t, tensor_t, start_t, numel_t) in self._tables_for(xs).items():
            n = len(self.groups[dtype][1])
            if n:
                launch(_partial_sums_kernel, (n,), ptr_t, tensor_t, start_t, numel_t, partial[offset:],
                       DTYPE=_TL[dtype], ACC=tl.float64 if dtype == torch.float64 else tl.float32,
                       BLOCK=self.block, STEPS=self.steps, num_warps=4)
            offset += n
        launch(_total_kernel, (1,), partial, out, self.programs, BLOCK=1024 if not interpreting() else 64,
               num_warps=4)
