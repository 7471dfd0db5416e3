"""Small torch reference implementations of the blocks (written from the papers / HF, not from kiln)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.ir.ops.attention import allowed_positions


def rms(x, w, eps, offset=False):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * ((1 + w) if offset else w)


def allowed(sq, sk, causal, window):
    """[Sq, Sk] bool, the last query aligned with the last key: the attention op's own rule (tested against
    torch in tests/ops), so these tests check the blocks' wiring and the caches' masks against it."""
    ok = allowed_positions(sq, sk, causal, window)
    return torch.ones(sq, sk, dtype=torch.bool) if ok is None else torch.from_numpy(ok)


def sdpa(q, k, v, keep=None, scale=None, softcap=None):
    """q [B, H, Sq, D], k/v [B, Hkv, Sk, D] (GQA repeats), keep broadcasting to [B, H, Sq, Sk]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def heads(x, n):
    b, s, _ = x.shape
    return x.reshape(b, s, n, -1).transpose(1, 2)


def merge(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def act(x, name):
    return {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "relu": F.relu,
            "tanh": torch.tanh, "sigmoid": torch.sigmoid}[name](x)
