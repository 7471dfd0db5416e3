"""Ops without a Triton kernel: torch implementations on the GPU, else the NumPy kernel on the host.

Each torch function reproduces the NumPy reference kernel's semantics (tests compare them);
its result is copied into the op's arena slot, so it composes with the generated kernels and
is captured in the CUDA graph like them. Ops with neither run on the host through the NumPy
reference kernels (a device -> host -> device round trip; such a plan is not captured as a
CUDA graph). `FALLBACK_TABLE` in `__init__` lists which ops go where.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kiln.ir.ops.conv import conv_geometry, conv_transpose_geometry

from .. import collectives as _coll
from .device import to_numpy, torch_dtype


def _up(t):
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def _axes(axes, ndim):
    if axes is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in ([axes] if isinstance(axes, int) else axes))


def _pointwise(name):
    def run(*xs, **attrs):
        dt = xs[0].dtype
        ys = [_up(x) for x in xs]
        if name == "gelu":
            r = F.gelu(ys[0], approximate=attrs.get("approximate", "none"))
        elif name == "rsqrt":
            r = torch.rsqrt(ys[0])
        elif name == "clamp":
            r = torch.clamp(ys[0], min=attrs.get("min"), max=attrs.get("max"))
        else:
            r = getattr(torch, name)(*ys)
        return r.to(dt) if r.dtype.is_floating_point else r
    return run


def _reduce(name):
    def run(x, axes=None, keepdims=False):
        ax = _axes(axes, x.dim())
        y = _up(x)
        if not ax:
            return x.clone()
        if name == "sum":
            r = y.sum(dim=ax, keepdim=keepdims, dtype=torch.int64 if not y.is_floating_point() else None)
        elif name == "mean":
            r = y.mean(dim=ax, keepdim=keepdims)
        elif name == "max":
            r = y.amax(dim=ax, keepdim=keepdims)
        else:
            r = y.amin(dim=ax, keepdim=keepdims)
        return r.to(x.dtype)
    return run


def _softmax(x, axis=-1):
    return torch.softmax(_up(x), dim=axis).to(x.dtype)


def _log_softmax(x, axis=-1):
    return torch.log_softmax(_up(x), dim=axis).to(x.dtype)


def _argmax(x, axis=-1, keepdims=False):
    return torch.argmax(_up(x), dim=axis, keepdim=keepdims).to(torch.int64)


def _group_norm(x, weight=None, bias=None, num_groups=1, eps=1e-5):
    return F.group_norm(_up(x), num_groups, _up(weight), _up(bias), eps).to(x.dtype)


def _pad(x, pads, mode="constant", value=0.0):
    flat = [p for pair in reversed(pads) for p in pair]
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=value)
    return F.pad(_up(x), flat, mode=mode).to(x.dtype)   # reflect / replicate (torch: last 1-3 dims)


def _wrap(idx, size):
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


def _gather(x, indices, axis=0):
    axis %= x.dim()
    flat = _wrap(indices, x.shape[axis]).reshape(-1)
    out = torch.index_select(x, axis, flat)
    return out.reshape(x.shape[:axis] + tuple(indices.shape) + x.shape[axis + 1:])


def _take_along_axis(x, indices, axis=-1):
    axis %= x.dim()
    shape = [max(a, b) if j != axis else b for j, (a, b) in enumerate(zip(x.shape, indices.shape))]
    xs = [max(a, b) if j != axis else a for j, (a, b) in enumerate(zip(x.shape, indices.shape))]
    return torch.gather(x.expand(xs), axis, _wrap(indices, x.shape[axis]).expand(shape))


def _one_hot(ids, num_classes, dtype="float32"):
    return F.one_hot(ids.to(torch.int64), num_classes).to(torch_dtype(dtype))


def _repeat_interleave(x, repeats, axis=0):
    return torch.repeat_interleave(x, repeats, dim=axis)


def _index_add(indices, src, axis=0, size=None):
    rank = src.dim() - indices.dim() + 1
    axis %= max(rank, 1)
    flat_src = src.reshape(src.shape[:axis] + (-1,) + src.shape[axis + indices.dim():])
    out = torch.zeros(src.shape[:axis] + (size,) + src.shape[axis + indices.dim():],
                      dtype=torch.float32 if src.dtype in (torch.float16, torch.bfloat16) else src.dtype,
                      device=src.device)
    out.index_add_(axis, _wrap(indices, size).reshape(-1), _up(flat_src))
    return out.to(src.dtype)


def _scatter_add(indices, src, axis=-1, size=None):
    axis %= src.dim()
    shape = list(src.shape)
    shape[axis] = size
    acc = _up(src)
    out = torch.zeros(shape, dtype=acc.dtype, device=src.device)
    out.scatter_add_(axis, _wrap(indices, size).expand(src.shape), acc)
    return out.to(src.dtype)


def _pixel_shuffle(x, upscale_factor):
    return F.pixel_shuffle(x, upscale_factor)


def _pixel_unshuffle(x, downscale_factor):
    return F.pixel_unshuffle(x, downscale_factor)


def _slice(x, axes, starts, ends, steps=None):
    """Only slices with a negative step come here (the others are views)."""
    out = x
    for a, s, e, st in zip(axes, starts, ends, steps or [1] * len(axes)):
        a %= x.dim()
        idx = torch.tensor(list(range(x.shape[a]))[slice(s, e, st)], dtype=torch.int64, device=x.device)
        out = torch.index_select(out, a, idx)
    return out


def _scores(q, k, mask, causal, scale, window, softcap):
    """float32 scores [B, Hq, Sq, Sk] (capped, then masked), the scale, and k with heads repeated (GQA)."""
    qf, kf = _up(q), _up(k)
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        kf = kf.repeat_interleave(hq // hk, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    masked = s
    if mask is not None:
        masked = masked.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else masked + _up(mask)
    sq, sk = q.shape[2], k.shape[2]
    if causal or window is not None:
        qpos = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        kpos = torch.arange(sk, device=q.device)[None, :]
        allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
        if causal:
            allowed &= kpos <= qpos
        if window is not None:
            allowed &= qpos - kpos < window
            if not causal:
                allowed &= kpos - qpos < window
        masked = masked.masked_fill(~allowed, float("-inf"))
    return s, masked, scale, kf


def _repeat_heads(x, hq):
    return x.repeat_interleave(hq // x.shape[1], dim=1) if x.shape[1] != hq else x


def _sum_heads(x, hk):
    b, hq = x.shape[:2]
    return x.reshape((b, hk, hq // hk) + tuple(x.shape[2:])).sum(2) if hq != hk else x


def _attention(q, k, v, mask=None, causal=False, scale=None, window=None, softcap=None, lse=False):
    _, s, _, _ = _scores(q, k, mask, causal, scale, window, softcap)
    vf = _repeat_heads(_up(v), q.shape[1])
    m = s.amax(-1, keepdim=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m_safe)
    tot = e.sum(-1, keepdim=True)
    p = torch.where(tot > 0, e / torch.where(tot > 0, tot, torch.ones_like(tot)), torch.zeros_like(e))
    out = torch.matmul(p, vf).to(q.dtype)
    if not lse:
        return out
    lse_v = torch.where(tot[..., 0] > 0, torch.log(tot[..., 0]) + m_safe[..., 0],
                        torch.full_like(tot[..., 0], float("-inf")))
    return out, lse_v


def _attention_backward(q, k, v, mask, out, lse, dout, dlse=None, causal=False, scale=None, window=None,
                        softcap=None, mask_grad=False):
    """dq, dk, dv (and the scores' gradient with mask_grad) with probabilities recomputed from lse;
    0 for masked entries and fully masked rows (lse = -inf), as the NumPy kernel."""
    capped, masked, scale, kf = _scores(q, k, mask, causal, scale, window, softcap)
    hq, hk = q.shape[1], k.shape[1]
    lf = _up(lse)[..., None]
    finite = torch.isfinite(lf)
    p = torch.where(finite, torch.exp(masked - torch.where(finite, lf, torch.zeros_like(lf))), torch.zeros_like(masked))
    do = _up(dout)
    vf = _repeat_heads(_up(v), hq)
    dv = _sum_heads(torch.matmul(p.transpose(-1, -2), do), hk)
    dp = torch.matmul(do, vf.transpose(-1, -2))
    row = (do * _up(out)).sum(-1, keepdim=True)
    if dlse is not None:
        row = row - _up(dlse)[..., None]
    ds = p * (dp - row)
    dmask = ds
    if softcap is not None:
        ds = ds * (1 - torch.square(capped / softcap))
    ds = ds * scale
    dq = torch.matmul(ds, kf)
    dk = _sum_heads(torch.matmul(ds.transpose(-1, -2), _up(q)), hk)
    grads = (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype))
    return grads + (dmask.to(q.dtype),) if mask_grad else grads


def _attention_lse(q, k, v, mask=None, **attrs):
    return _attention(q, k, v, mask, lse=True, **attrs)


def _conv(nd):
    name = f"conv{nd}d"
    fn = getattr(F, name)

    def run(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        geo = conv_geometry(name, nd, x.shape, weight.shape, stride, padding, dilation, groups)
        flat = [p for pair in reversed(geo.pads) for p in pair]
        xp = F.pad(_up(x), flat) if any(flat) else _up(x)
        return fn(xp, _up(weight), _up(bias), geo.stride, 0, geo.dilation, groups).to(x.dtype)
    return run


def _conv_transpose(nd):
    name = f"conv_transpose{nd}d"
    fn = getattr(F, name)

    def run(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
        geo = conv_transpose_geometry(name, nd, x.shape, weight.shape, stride, padding, output_padding,
                                      dilation, groups)
        return fn(_up(x), _up(weight), _up(bias), geo.stride, geo.padding, geo.output_padding, groups,
                  geo.dilation).to(x.dtype)
    return run


TORCH_FALLBACKS = {
    "softmax": _softmax, "log_softmax": _log_softmax, "argmax": _argmax,
    "sum": _reduce("sum"), "mean": _reduce("mean"), "max": _reduce("max"), "min": _reduce("min"),
    "group_norm": _group_norm, "pad": _pad, "gather": _gather, "take_along_axis": _take_along_axis,
    "one_hot": _one_hot, "repeat_interleave": _repeat_interleave, "index_add": _index_add,
    "scatter_add": _scatter_add, "pixel_shuffle": _pixel_shuffle, "pixel_unshuffle": _pixel_unshuffle,
    "slice": _slice, "attention": _attention, "attention_lse": _attention_lse,
    "attention_backward": _attention_backward,
    "gelu": _pointwise("gelu"), "clamp": _pointwise("clamp"),
    **{f"conv{n}d": _conv(n) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": _conv_transpose(n) for n in (1, 2, 3)},
    # collectives: torch.distributed on the CUDA tensors (NCCL; captured in the CUDA graph)
    "all_reduce": _coll.all_reduce, "all_gather": _coll.all_gather, "reduce_scatter": _coll.reduce_scatter,
}


class TorchLaunch:
    """Runs a torch fallback and copies its result(s) into the planned output slots."""

    archetype = "fallback-torch"

    def __init__(self, op: str, attrs: dict):
        self.op, self.fn, self.attrs = op, TORCH_FALLBACKS[op], attrs

    def __call__(self, inputs, outputs) -> None:
        res = self.fn(*inputs, **self.attrs)
        res = res if isinstance(res, tuple) else (res,)
        for o, r in zip(outputs, res):
            o.copy_(r.reshape(o.shape) if r.shape != o.shape else r)


class HostLaunch:
    """Runs the NumPy reference kernel on the host: correct for every op, slow, not graph-capturable."""

    archetype = "fallback-host"

    def __init__(self, op: str, attrs: dict):
        from kiln.backends.numpy.kernels import KERNELS
        self.op, self.fn, self.attrs = op, KERNELS[op], attrs

    def __call__(self, inputs, outputs) -> None:
        def host(x):
            if isinstance(x, list):
                return [host(t) for t in x]
            return None if x is None else to_numpy(x)

        res = self.fn(*[host(x) for x in inputs], **self.attrs)
        res = res if isinstance(res, tuple) else (res,)
        for o, r in zip(outputs, res):
            a = np.ascontiguousarray(r)
            if a.dtype.name == "bfloat16":
                t = torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
            else:
                t = torch.from_numpy(a.copy())
            o.copy_(t.reshape(o.shape).to(o.device))
