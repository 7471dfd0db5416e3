"""Fused-op kernels: the exact composition of the reference kernels they replace."""

from __future__ import annotations

import numpy as np

from ._registry import KERNELS, kernel, up


def _activation(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "none":
        return y
    if activation == "silu":
        return KERNELS["silu"](y)
    if activation == "gelu":
        return KERNELS["gelu"](y, approximate="none")
    if activation == "gelu_tanh":
        return KERNELS["gelu"](y, approximate="tanh")
    if activation == "relu":
        return KERNELS["relu"](y)
    if activation in ("swiglu", "geglu", "geglu_tanh"):
        n = y.shape[-1] // 2
        gate, up_ = y[..., :n], y[..., n:]
        if activation == "swiglu":
            return KERNELS["swiglu"](gate, up_)
        return KERNELS["geglu"](gate, up_, approximate="tanh" if activation == "geglu_tanh" else "none")
    raise ValueError(f"fused_linear: unknown activation {activation!r}")


@kernel("fused_linear")
def _fused_linear(x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None,
                  activation="none", norm="none", eps=1e-5, add_unit_offset=False):
    dt = x.dtype
    xf = up(x)
    if norm == "rms_norm":
        xf = KERNELS["rms_norm"](xf, up(norm_weight), eps=eps, add_unit_offset=add_unit_offset)
    elif norm == "layer_norm":
        xf = KERNELS["layer_norm"](xf, up(norm_weight), up(norm_bias), eps=eps)
    elif norm != "none":
        raise ValueError(f"fused_linear: unknown norm {norm!r}")
    y = np.matmul(xf, up(weight).T)
    if bias is not None:
        y += up(bias)
    y = _activation(y, activation)
    if residual is not None:
        y = y + up(residual)
    return y.astype(dt, copy=False)
