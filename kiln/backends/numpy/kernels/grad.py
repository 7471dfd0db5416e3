"""Kernels of the backward-pass ops: scatter-adds, attention with a saved log-sum-exp and its
backward, softmax cross-entropy's backward."""

from __future__ import annotations

import numpy as np

from ._registry import compute_dtype, kernel, up
from .attention import attention_bias
from .reduction import cross_entropy_rows


@kernel("index_add")
def _index_add(indices, src, axis=0, size=None):
    r = indices.ndim
    out_shape = src.shape[:axis] + (size,) + src.shape[axis + r:]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"index_add: index out of range [{-size}, {size}) (min {indices.min()}, max {indices.max()})")
    acc = np.zeros(out_shape, up(src).dtype)
    # move the indexed axis of out, and the index axes of src, to the front
    src_m = np.moveaxis(up(src), list(range(axis, axis + r)), list(range(r)))
    np.add.at(np.moveaxis(acc, axis, 0), indices, src_m)
    return acc.astype(src.dtype, copy=False)


@kernel("scatter_add")
def _scatter_add(indices, src, axis=-1, size=None):
    axis = axis % src.ndim
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"scatter_add: index out of range [{-size}, {size}) (min {indices.min()}, max {indices.max()})")
    shape = list(src.shape)
    shape[axis] = size
    acc = np.zeros(shape, up(src).dtype)
    idx = np.broadcast_to(indices, src.shape)
    grid = list(np.indices(src.shape, sparse=True))
    grid[axis] = idx
    np.add.at(acc, tuple(grid), up(src))
    return acc.astype(src.dtype, copy=False)


def _scores(q, k, mask, causal, scale, window, softcap):
    """float scores [B, Hq, Sq, Sk]: (capped before masking, after masking), with k repeated for GQA."""
    qf, kf = up(q), up(k)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        kf = np.repeat(kf, group, axis=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = np.matmul(qf, np.swapaxes(kf, -1, -2)) * np.asarray(scale, qf.dtype)
    if softcap is not None:
        s = np.tanh(s / softcap) * softcap
    masked = s
    if mask is not None:
        masked = np.where(mask, masked, -np.inf) if mask.dtype == np.bool_ else masked + up(mask)
    allowed = attention_bias(q.shape[2], k.shape[2], causal, window)
    if allowed is not None:
        masked = np.where(allowed, masked, -np.inf)
    return s, masked, scale


def _probs(masked, lse):
    """exp(s - lse), 0 for masked entries and fully masked rows (lse = -inf)."""
    finite = np.isfinite(lse)[..., None]
    with np.errstate(invalid="ignore"):
        return np.where(finite, np.exp(masked - np.where(finite, lse[..., None], 0)), 0)


def _repeat_heads(x, hq):
    return np.repeat(x, hq // x.shape[1], axis=1) if x.shape[1] != hq else x


def _sum_heads(x, hk):
    b, hq = x.shape[:2]
    return x.reshape((b, hk, hq // hk) + x.shape[2:]).sum(2) if hq != hk else x


@kernel("attention_lse")
def _attention_lse(q, k, v, mask=None, causal=False, scale=None, window=None, softcap=None):
    _, masked, _ = _scores(q, k, mask, causal, scale, window, softcap)
    m = masked.max(-1)
    safe = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        lse = np.log(np.exp(masked - safe[..., None]).sum(-1)) + safe
    lse = np.where(np.isfinite(m), lse, -np.inf)
    out = np.matmul(_probs(masked, lse), _repeat_heads(up(v), q.shape[1]))
    return out.astype(q.dtype, copy=False), lse.astype(masked.dtype, copy=False)


@kernel("attention_backward")
def _attention_backward(q, k, v, mask, out, lse, dout, dlse=None, causal=False, scale=None, window=None,
                        softcap=None, mask_grad=False):
    capped, masked, scale = _scores(q, k, mask, causal, scale, window, softcap)
    hq, hk = q.shape[1], k.shape[1]
    p = _probs(masked, up(lse))
    do = up(dout)
    vr = _repeat_heads(up(v), hq)
    dv = _sum_heads(np.matmul(np.swapaxes(p, -1, -2), do), hk)
    dp = np.matmul(do, np.swapaxes(vr, -1, -2))
    row = (do * up(out)).sum(-1, keepdims=True)
    if dlse is not None:
        row = row - up(dlse)[..., None]
    ds = p * (dp - row)  # gradient of the masked scores
    dmask = ds
    if softcap is not None:
        ds = ds * (1 - np.square(capped / softcap))
    ds = ds * np.asarray(scale, ds.dtype)
    dq = np.matmul(ds, _repeat_heads(up(k), hq))
    dk = _sum_heads(np.matmul(np.swapaxes(ds, -1, -2), up(q)), hk)
    grads = (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))
    return grads + (dmask.astype(q.dtype),) if mask_grad else grads


@kernel("softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward(logits, labels, lse, dloss, dlse=None, ignore_index=-100, label_smoothing=0.0):
    x = up(logits)
    classes = x.shape[-1]
    valid, safe = cross_entropy_rows("softmax_cross_entropy_backward", labels, classes, ignore_index)
    d = np.where(valid, up(dloss), 0).astype(x.dtype, copy=False)
    row = d if dlse is None else d + up(dlse)
    dx = np.exp(x - up(lse)[..., None]) * row[..., None]
    if label_smoothing:
        dx = dx - (label_smoothing / classes) * d[..., None]
    picked = np.take_along_axis(dx, safe[..., None], axis=-1)
    np.put_along_axis(dx, safe[..., None], picked - (1.0 - label_smoothing) * d[..., None], axis=-1)
    return dx.astype(logits.dtype, copy=False)


@kernel("rms_norm_backward")
def _rms_norm_backward(x, weight, dy, eps=1e-6, add_unit_offset=False, weight_grad=False):
    xf, g = up(x), up(dy)
    rstd = 1 / np.sqrt(np.square(xf).mean(-1, keepdims=True) + np.asarray(eps, xf.dtype))
    xhat = xf * rstd
    w = None if weight is None else up(weight) + 1 if add_unit_offset else up(weight)
    d_xhat = g * w if w is not None else g
    dx = (rstd * (d_xhat - xhat * (d_xhat * xhat).mean(-1, keepdims=True))).astype(x.dtype, copy=False)
    if not weight_grad:
        return dx
    dw = (g * xhat).reshape(-1, x.shape[-1]).sum(0)
    return dx, dw.astype(weight.dtype, copy=False)


def _add_along(g: np.ndarray, axis: int, idx: np.ndarray, size: int) -> np.ndarray:
    """out[..., idx[j], ...] += g[..., j, ...] along axis (out has `size` there)."""
    shape = list(g.shape)
    shape[axis] = size
    out = np.zeros(shape, g.dtype)
    np.add.at(np.moveaxis(out, axis, 0), idx, np.moveaxis(g, axis, 0))
    return out


@kernel("interpolate_backward")
def _interpolate_backward(dy, input_size, size=None, scale_factor=None, mode="nearest", align_corners=None,
                          recompute_scale_factor=None):
    from kiln.ir.ops.conv import interp_geometry

    from .conv import _linear_taps, _nearest_index
    x_shape = dy.shape[:2] + tuple(input_size)
    geo = interp_geometry("interpolate_backward", x_shape, size, scale_factor, mode, align_corners,
                          recompute_scale_factor)
    dt = compute_dtype(dy)
    g = up(dy)
    nd = dy.ndim - 2
    for a in reversed(range(nd)):  # interpolate resamples dim 0 first: undo the last dim first
        s, o, sc = input_size[a], geo.out_spatial[a], geo.scales[a]
        if mode in ("nearest", "nearest-exact"):
            g = _add_along(g, 2 + a, _nearest_index(s, o, sc, mode == "nearest-exact", dt), s)
        else:
            i0, i1, l0, l1 = _linear_taps(s, o, sc, bool(align_corners), dt)
            shape = [1] * nd
            shape[a] = o
            g = _add_along(g * l0.reshape(shape), 2 + a, i0, s) + _add_along(g * l1.reshape(shape), 2 + a, i1, s)
    return g.astype(dy.dtype, copy=False)
