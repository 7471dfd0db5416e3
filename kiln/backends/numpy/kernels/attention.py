"""Attention and rotary-embedding kernels (reference semantics for every backend)."""

from __future__ import annotations

import numpy as np

from kiln.ir.ops.attention import allowed_positions as attention_bias

from ._registry import kernel, up
from .reduction import softmax


def attention_scores(q, k, mask=None, causal=False, scale=None, window=None, softcap=None):
    """float32 scores [B, Hq, Sq, Sk] after scale, softcap and masks (masked = -inf)."""
    qf, kf = up(q), up(k)
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        kf = np.repeat(kf, hq // hk, axis=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = np.matmul(qf, np.swapaxes(kf, -1, -2)) * np.asarray(scale, qf.dtype)
    if softcap is not None:
        s = np.tanh(s / softcap) * softcap
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + up(mask)
    allowed = attention_bias(q.shape[2], k.shape[2], causal, window)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    return s


@kernel("attention")
def _attention(q, k, v, mask=None, causal=False, scale=None, window=None, softcap=None):
    s = attention_scores(q, k, mask, causal, scale, window, softcap)
    with np.errstate(invalid="ignore"):  # fully masked rows give 0/0 here ...
        p = softmax(s, -1)
    np.copyto(p, 0.0, where=np.isnan(p))  # ... and attend to nothing (in place: nan_to_num is slow)
    vf = up(v)
    if v.shape[1] != q.shape[1]:
        vf = np.repeat(vf, q.shape[1] // v.shape[1], axis=1)
    return np.matmul(p, vf).astype(q.dtype, copy=False)


@kernel("rope")
def _rope(x, cos, sin, layout="half"):
    xf, c, s = up(x), up(cos)[:, None], up(sin)[:, None]
    rot = 2 * c.shape[-1]
    xr, rest = xf[..., :rot], xf[..., rot:]
    if layout == "half":
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
        out = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = np.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(xr.shape)
    return np.concatenate([out, rest], axis=-1).astype(x.dtype, copy=False)
