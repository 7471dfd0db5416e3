"""Matmul archetype: a Triton GEMM with fused prologue and epilogue, or cuBLAS through torch.

    out = act(norm(A) @ B + bias) + residual          (gated: act(gate) * up, the two halves of B)

A and B are read through their strides, so transposed operands (`transpose_a/b`, linear's
[out, in] weight) cost nothing; one batch dimension (collapsed from any broadcast batch
shape that allows it) rides on the grid's third axis. The norm prologue computes each row's
statistics over K first, then normalizes the A tiles on the fly.

Which implementation runs is a small cost model (`choose_impl`): skinny products (decode,
M < 128) are memory-bound, and the fused Triton kernel saves the extra passes over the
output; large products go to cuBLAS, with the norm done by the reduction kernel before and
the epilogue by one generated pointwise kernel after. float32 products run in IEEE float32
(no TF32), so float32 models match the reference to ~1e-6.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..device import interpreting
from .launch import compiling_only, launch
from . import tmath as tm


@triton.jit
def _matmul_kernel(a, b, c, bias, res, nw, nb,
                   M, N, K, B1,
                   sab0, sab, sam, sak, sbb0, sbb, sbk, sbn, scb0, scb, scm, scn, srb0, srb, srm, srn,
                   up_off, eps,
                   NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   ACT: tl.constexpr, GATED: tl.constexpr, HAS_RES: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                   IEEE: tl.constexpr, DOT_DTYPE: tl.constexpr, INTERP: tl.constexpr, ROUND: tl.constexpr):
    pid = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    b0 = bid // B1
    b1 = bid % B1
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mmask = rm < M
    nmask = rn < N
    a_ptr = a + b0 * sab0 + b1 * sab + rm[:, None].to(tl.int64) * sam
    b_ptr = b + b0 * sbb0 + b1 * sbb + rn[None, :].to(tl.int64) * sbn

    if NORM != "none":  # row statistics over all of K first
        mean, rstd = tm.row_norm_stats(a_ptr, sak, mmask, K, eps, NORM, BM, BK)

    acc = tl.zeros([BM, BN], tl.float32)
    if GATED:
        acc_up = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        kmask = kk < K
        at = tl.load(a_ptr + kk[None, :] * sak, mask=mmask[:, None] & kmask[None, :], other=0.0)
        if NORM != "none":
            at = tm.norm_tile(at, mean, rstd, nw, nb, kk, kmask, UNIT_OFFSET, HAS_NORM_BIAS).to(DOT_DTYPE)
        bt = tl.load(b_ptr + kk[:, None] * sbk, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc += tm.mma(at, bt, IEEE, INTERP)
        if GATED:
            bu = tl.load(b_ptr + up_off * sbn + kk[:, None] * sbk, mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc_up += tm.mma(at, bu, IEEE, INTERP)

    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(bias + up_off + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if GATED:
        acc = tm.epilogue_activation(acc, acc_up, ACT, GATED)
    else:
        acc = tm.epilogue_activation(acc, acc, ACT, GATED)
    cmask = mmask[:, None] & nmask[None, :]
    if HAS_RES:
        r = tl.load(res + b0 * srb0 + b1 * srb + rm[:, None].to(tl.int64) * srm + rn[None, :] * srn, mask=cmask, other=0.0)
        acc += r.to(tl.float32)
    if ROUND:  # a fused cast to float32 of a half-precision result: round as the unfused graph does
        acc = acc.to(DOT_DTYPE).to(tl.float32)
    tl.store(c + b0 * scb0 + b1 * scb + rm[:, None].to(tl.int64) * scm + rn[None, :] * scn,
             acc.to(c.dtype.element_ty), mask=cmask)


GATED = ("swiglu", "geglu", "geglu_tanh")
ACTIVATIONS = ("none", "silu", "gelu", "gelu_tanh", "relu") + GATED
NORMS = ("none", "rms_norm", "layer_norm")


def fused_flags(dtype: torch.dtype, *, norm: str, unit_offset: bool, has_norm_bias: bool, has_bias: bool,
                activation: str, has_residual: bool, round_out: bool) -> dict:
    """The constexpr switches of the fused prologue/epilogue (shared by the GEMM and the GEMV)."""
    if norm not in NORMS:
        raise NotImplementedError(f"matmul prologue norm {norm!r} is not one of {NORMS}")
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"matmul epilogue activation {activation!r} is not one of {ACTIVATIONS}")
    return dict(NORM=norm, UNIT_OFFSET=unit_offset, HAS_NORM_BIAS=has_norm_bias, HAS_BIAS=has_bias, ACT=activation,
                GATED=activation in GATED, HAS_RES=has_residual, IEEE=dtype == torch.float32, INTERP=interpreting(),
                ROUND=round_out, DOT_DTYPE={torch.float32: tl.float32, torch.float16: tl.float16,
                                            torch.bfloat16: tl.bfloat16}.get(dtype, tl.float32))


def choose_impl(M: int, N: int, K: int, device: torch.device, batch: int = 1) -> str:
    """'gemv', 'triton' or 'cublas'. KILN_MATMUL=gemv|triton|cublas forces one where it applies (experiments).

    A few rows of one product stream the weight (gemv.py); skinny products up to M = 128 are
    the fused tensor-core GEMM; larger ones cuBLAS."""
    from .gemv import MAX_M

    forced = os.environ.get("KILN_MATMUL")
    gemv_ok = batch == 1 and M <= MAX_M
    if forced == "gemv":
        return "gemv" if gemv_ok else "triton"
    if forced in ("triton", "cublas"):
        return forced if (forced == "triton" or device.type == "cuda") else "triton"
    if gemv_ok:
        return "gemv"
    if device.type != "cuda":
        return "triton"
    return "triton" if M < 128 else "cublas"


def config(M: int, N: int, K: int, dtype: torch.dtype) -> dict:
    if interpreting():
        return dict(BM=16, BN=16 if N <= 16 else 32, BK=16 if K <= 16 else 32, GROUP_M=8, num_warps=4, num_stages=1)
    if M <= 16:  # memory-bound: narrow column blocks so even a 576-wide layer spreads over many SMs
        if dtype == torch.float32:
            return dict(BM=16, BN=32, BK=64, GROUP_M=8, num_warps=4, num_stages=3)
        small = N <= 640 and K <= 640
        if M <= 2:   # (block sizes from a sweep of SmolLM2's decode matmuls on an H100)
            bn, bk = (32, 128) if small else (16 if N <= 8192 else 64, 128 if K >= 1024 else 256)
        else:
            bn, bk = (16, 128) if small else (64, 256)
        return dict(BM=16, BN=bn, BK=bk, GROUP_M=8, num_warps=4, num_stages=3)
    if M <= 64:
        return dict(BM=64, BN=64, BK=64, GROUP_M=8, num_warps=4, num_stages=4)
    big = dtype != torch.float32
    return dict(BM=128, BN=128 if big else 64, BK=64 if big else 32, GROUP_M=8, num_warps=8, num_stages=3)


class Matmul:
    """One fused matmul launch over views a [B0, B1, M, K], b [B0, B1, K, N (2N gated)], c [B0, B1, M, N]
    (or 3-d views without B0); batch strides of 0 broadcast."""

    archetype = "matmul"

    def __init__(self, M: int, N: int, K: int, batch: int, dtype: torch.dtype, *, norm: str = "none",
                 eps: float = 1e-5, unit_offset: bool = False, has_bias: bool = False,
                 activation: str = "none", has_residual: bool = False, round_out: bool = False,
                 has_norm_bias: bool = False, cfg: dict | None = None):
        self.M, self.N, self.K, self.batch = M, N, K, batch
        self.cfg = cfg or config(M, N, K, dtype)
        self.gated = activation in GATED
        self.flags = fused_flags(dtype, norm=norm, unit_offset=unit_offset, has_norm_bias=has_norm_bias,
                                 has_bias=has_bias, activation=activation, has_residual=has_residual,
                                 round_out=round_out)
        self.eps = float(eps)
        self.grid = (triton.cdiv(M, self.cfg["BM"]) * triton.cdiv(N, self.cfg["BN"]), batch)

    def __call__(self, a, b, c, bias=None, residual=None, norm_weight=None, norm_bias=None) -> None:
        """a, b, c, residual: views [(B0,) B1, rows, cols] (batch stride 0 = broadcast)."""
        cfg = self.cfg
        a, b, c = _4d(a), _4d(b), _4d(c)
        res = _4d(residual) if residual is not None else c
        launch(_matmul_kernel, self.grid,
            a, b, c, bias if bias is not None else c, res,
            norm_weight if norm_weight is not None else c, norm_bias if norm_bias is not None else c,
            self.M, self.N, self.K, c.shape[1],
            *_strides(a), *_strides(b), *_strides(c), *_strides(res),
            self.N, self.eps,
            BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], GROUP_M=cfg["GROUP_M"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **self.flags)


def _4d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 4 else t.unsqueeze(0)


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Two batch strides (0 where that batch dim has size 1) and the row and column strides."""
    return (t.stride(0) if t.shape[0] > 1 else 0, t.stride(1) if t.shape[1] > 1 else 0, t.stride(2), t.stride(3))


class CublasMatmul:
    """The same contract as `Matmul`, through cuBLAS (torch.matmul / addmm): the norm prologue
    runs first as the reduction kernel, the epilogue after as one generated pointwise kernel.

    `c_meta` / `residual_meta`: the 3-d output and residual views (meta or real tensors), which
    the epilogue kernel is specialized for."""

    archetype = "matmul"

    def __init__(self, M: int, N: int, K: int, batch: int, dtype: torch.dtype, *, c_meta, residual_meta=None,
                 norm: str = "none", eps: float = 1e-5, unit_offset: bool = False, has_bias: bool = False,
                 activation: str = "none", round_out: bool = False, has_norm_bias: bool = False):
        from kiln.ir import as_dtype

        from ..device import kiln_dtype
        from .pointwise import PointwiseExpr, PointwiseKernel
        from .reduction import Norm

        if norm not in NORMS or activation not in ACTIVATIONS:
            raise NotImplementedError(f"cuBLAS matmul: norm {norm!r} / activation {activation!r}")
        self.M, self.N, self.K, self.batch, self.dtype = M, N, K, batch, dtype
        self.has_bias = has_bias
        self.norm = Norm(torch.empty((M, K), dtype=dtype, device="meta"), rms=norm == "rms_norm", eps=eps,
                         has_residual=False, has_weight=True, has_bias=has_norm_bias,
                         unit_offset=unit_offset) if norm != "none" else None
        gated = activation in GATED
        self.width = 2 * N if gated else N
        needs_epilogue = activation != "none" or residual_meta is not None or c_meta.dtype != dtype
        self.epilogue = None
        if needs_epilogue:
            dt = kiln_dtype(dtype)
            f32 = as_dtype("float32")
            e = PointwiseExpr()
            tmp_meta = torch.empty((batch, M, self.width), dtype=dtype, device="meta")
            ins = [tmp_meta[..., :N]]
            g = e.add_input(dt)
            if gated:
                u = e.add_input(dt)
                ins.append(tmp_meta[..., N:])
                base = {"swiglu": ("swiglu", {}), "geglu": ("geglu", {"approximate": "none"}),
                        "geglu_tanh": ("geglu", {"approximate": "tanh"})}[activation]
                y = e.add(base[0], [g, u], base[1], f32)
            elif activation != "none":
                op, at = {"silu": ("silu", {}), "relu": ("relu", {}), "gelu": ("gelu", {"approximate": "none"}),
                          "gelu_tanh": ("gelu", {"approximate": "tanh"})}[activation]
                y = e.add(op, [g], at, f32)
            else:
                y = e.add("identity", [g], {}, f32)
            if residual_meta is not None:
                r = e.add_input(dt)
                ins.append(residual_meta)
                y = e.add("add", [y, r], {}, f32)
            if round_out:
                y = e.add("cast", [y], {"dtype": dt.name}, f32)
            e.nodes[-1] = e.nodes[-1][:3] + (kiln_dtype(c_meta.dtype),)
            e.outputs = [y.index]
            self.epilogue = PointwiseKernel(e, (batch, M, N), ins, [c_meta])

    def scratch(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        out = []
        if self.norm is not None:
            out.append(((self.M, self.K), self.dtype))
        if self.epilogue is not None:
            out.append(((self.batch, self.M, self.width), self.dtype))
        return out

    def __call__(self, a, b, c, bias=None, residual=None, norm_weight=None, norm_bias=None, scratch=()) -> None:
        scratch = list(scratch)
        if self.norm is not None:
            normed = scratch.pop(0)
            rows = a[0] if a.shape[0] == 1 else a.reshape(-1, self.K)
            self.norm(rows, None, norm_weight, norm_bias, normed)
            a = normed.view(1, self.M, self.K)
        target = scratch.pop(0) if self.epilogue is not None else c
        if compiling_only():
            pass                      # nothing to compile in cuBLAS
        elif bias is not None:
            if a.shape[0] != 1 or b.shape[0] != 1:
                raise NotImplementedError("cuBLAS matmul with bias needs one batch")
            torch.addmm(bias, a[0], b[0], out=target[0])
        else:
            torch.matmul(a, b, out=target)
        if self.epilogue is not None:
            ins = [target[..., :self.N]]
            if self.width != self.N:
                ins.append(target[..., self.N:])
            if residual is not None:
                ins.append(residual)
            self.epilogue(ins, [c])
