"""Convolution, pooling and resampling kernels (channels-first, PyTorch semantics).

Convolution is im2col: a strided `sliding_window_view` of the padded input, copied
once into a [groups, N*P, C/groups*K] matrix and multiplied by the weight in one
batched matmul (depthwise convs accumulate over kernel taps instead). Transposed
convolution multiplies every input pixel by the kernel in one matmul and
scatter-adds the result tap by tap; pooling combines one strided slice per tap.
No loop runs over output positions. Geometry (pads, output sizes) comes from the
op specs in kiln.ir.ops.conv, so shapes here always agree with shape inference.
Half inputs compute in float32 and round once.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kiln.ir.ops.conv import (adaptive_bins, adaptive_output_size, conv_geometry, conv_transpose_geometry,
                              interp_geometry, pool_geometry)

from ._registry import compute_dtype, kernel, up


def _pad_spatial(x: np.ndarray, pads, value=0.0) -> np.ndarray:
    """Pad (or crop, for negative pads) the trailing spatial dims of x by (lo, hi) per dim."""
    crop = tuple(slice(max(-lo, 0), x.shape[2 + i] - max(-hi, 0)) for i, (lo, hi) in enumerate(pads))
    x = x[(slice(None), slice(None)) + crop]
    widths = [(0, 0), (0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    if all(w == (0, 0) for w in widths):
        return x
    return np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype))


def _windows(xp: np.ndarray, kernel, stride, dilation) -> np.ndarray:
    """View [N, C, *S] as [N, C, *O, *K]: every (strided) output position's (dilated) window."""
    nd = len(kernel)
    axes = tuple(range(2, 2 + nd))
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    v = sliding_window_view(xp, eff, axis=axes)
    idx = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride) \
        + tuple(slice(None, None, d) for d in dilation)
    return v[idx]


def _conv_nd(x, w, b, stride, dilation, pads, groups):
    """Grouped N-d convolution of float arrays (already in the compute dtype)."""
    nd = x.ndim - 2
    n, c = x.shape[:2]
    o, kernel = w.shape[0], w.shape[2:]
    win = _windows(_pad_spatial(x, pads), kernel, stride, dilation)  # [N, C, *O, *K]
    out_sp = win.shape[2:2 + nd]
    p, kk, cg, og = int(np.prod(out_sp)), int(np.prod(kernel)), c // groups, o // groups
    win = win.reshape((n, groups, cg) + out_sp + tuple(kernel))
    if cg == 1:
        # depthwise: a [N*P, K] x [K, Og] matmul per group is tiny, so accumulate over taps instead
        wt = w.reshape((1, groups, og) + (1,) * nd + (kk,))
        y = np.zeros((n, groups, og) + out_sp, x.dtype)
        for t, tap in enumerate(np.ndindex(*kernel)):
            y += win[(Ellipsis,) + tap] * wt[..., t]
        y = y.reshape((n, o) + out_sp)
    else:
        # im2col: [N, G, Cg, *O, *K] -> [G, N, *O, Cg, *K] -> [G, N*P, Cg*K] (one copy), one matmul
        perm = (1, 0) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
        cols = win.transpose(perm).reshape(groups, n * p, cg * kk)
        wmat = w.reshape(groups, og, cg * kk).transpose(0, 2, 1)  # [G, Cg*K, Og]
        y = np.matmul(cols, wmat)  # [G, N*P, Og]
        y = y.reshape((groups, n, p, og)).transpose(1, 0, 3, 2).reshape((n, o) + out_sp)
    if b is not None:
        y = y + b.reshape((1, o) + (1,) * nd)
    return y


def _make_conv(nd: int):
    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        geo = conv_geometry(f"conv{nd}d", nd, x.shape, weight.shape, stride, padding, dilation, groups)
        y = _conv_nd(up(x), up(weight), up(bias), geo.stride, geo.dilation, geo.pads, groups)
        return y.astype(x.dtype, copy=False)
    return conv


def _conv_transpose_nd(x, w, b, geo, groups):
    """Every input pixel times the [C_out, *K] kernel (one matmul), scatter-added tap by tap.

    The uncropped output has size (S-1)*stride + dil*(K-1) + 1 (+ output_padding) per dim; tap t
    of input pixel i lands at i*stride + t*dil, and `padding` is cropped from both ends.
    """
    nd = x.ndim - 2
    n, c = x.shape[:2]
    sp, kernel, og = x.shape[2:], w.shape[2:], w.shape[1]
    cg, p, kk = c // groups, int(np.prod(x.shape[2:])), int(np.prod(w.shape[2:]))
    xm = x.reshape(n, groups, cg, p).transpose(1, 0, 3, 2)  # [G, N, P, Cg]
    cols = np.matmul(xm, w.reshape(groups, 1, cg, og * kk))  # [G, N, P, Og*K]
    cols = cols.reshape((groups, n) + sp + (og,) + kernel)
    full = tuple((s - 1) * st + d * (k - 1) + 1 + op for s, st, d, k, op in
                 zip(sp, geo.stride, geo.dilation, kernel, geo.output_padding))
    y = np.zeros((groups, n) + full + (og,), x.dtype)
    for tap in np.ndindex(*kernel):
        dst = tuple(slice(t * d, t * d + (s - 1) * st + 1, st)
                    for t, d, s, st in zip(tap, geo.dilation, sp, geo.stride))
        y[(slice(None), slice(None)) + dst] += cols[(Ellipsis,) + tap]
    crop = tuple(slice(p_, p_ + o) for p_, o in zip(geo.padding, geo.out_spatial))
    y = y[(slice(None), slice(None)) + crop]  # [G, N, *out, Og]
    y = np.moveaxis(y, -1, 2).swapaxes(0, 1).reshape((n, groups * og) + geo.out_spatial)  # [N, G*Og, *out]
    if b is not None:
        y = y + b.reshape((1, groups * og) + (1,) * nd)
    return y


def _make_conv_transpose(nd: int):
    def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
        geo = conv_transpose_geometry(f"conv_transpose{nd}d", nd, x.shape, weight.shape, stride, padding,
                                      output_padding, dilation, groups)
        y = _conv_transpose_nd(up(x), up(weight), up(bias), geo, groups)
        return y.astype(x.dtype, copy=False)
    return conv_transpose


def _pool_pads(x_shape, geo):
    """(lo, hi) pads so that every (ceil_mode) window lies inside the padded input."""
    pads = []
    for s, k, st, p, d, o in zip(x_shape[2:], geo.kernel, geo.stride, geo.padding, geo.dilation, geo.out_spatial):
        need = (o - 1) * st + d * (k - 1) + 1
        pads.append((p, max(need - s - p, p)))
    return pads


def _reduce_taps(xp: np.ndarray, geo, ufunc) -> np.ndarray:
    """Combine the pooling windows of padded xp with ufunc, one strided slice per kernel tap."""
    y = None
    for tap in np.ndindex(*geo.kernel):
        v = xp[(slice(None), slice(None)) + tuple(
            slice(t * d, t * d + (o - 1) * st + 1, st)
            for t, d, o, st in zip(tap, geo.dilation, geo.out_spatial, geo.stride))]
        y = v.copy() if y is None else ufunc(y, v, out=y)
    return y


def _make_max_pool(nd: int):
    def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        geo = pool_geometry(f"max_pool{nd}d", nd, x.shape, kernel_size, stride, padding, dilation, ceil_mode)
        xp = _pad_spatial(up(x), _pool_pads(x.shape, geo), -np.inf)
        return _reduce_taps(xp, geo, np.maximum).astype(x.dtype, copy=False)
    return max_pool


def _avg_divisors(size: int, k: int, st: int, p: int, out: int, count_include_pad: bool) -> np.ndarray:
    """Per output position along one dim, torch's window element count (clipped to input or padded input)."""
    start = np.arange(out) * st - p
    end = np.minimum(start + k, size + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _make_avg_pool(nd: int):
    def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        geo = pool_geometry(f"avg_pool{nd}d", nd, x.shape, kernel_size, stride, padding, 1, ceil_mode)
        xf = up(x)
        total = _reduce_taps(_pad_spatial(xf, _pool_pads(x.shape, geo)), geo, np.add)
        if divisor_override is not None:
            return (total / np.asarray(divisor_override, xf.dtype)).astype(x.dtype, copy=False)
        div = np.ones((), xf.dtype)
        for i, (s, k, st, p, o) in enumerate(zip(x.shape[2:], geo.kernel, geo.stride, geo.padding,
                                                   geo.out_spatial)):
            shape = [1] * nd
            shape[i] = o
            div = div * _avg_divisors(s, k, st, p, o, count_include_pad).astype(xf.dtype).reshape(shape)
        return (total / div).astype(x.dtype, copy=False)
    return avg_pool


def _make_adaptive_avg_pool(nd: int):
    def adaptive_avg_pool(x, output_size):
        out = adaptive_output_size(f"adaptive_avg_pool{nd}d", nd, x.shape, output_size)
        y = up(x)
        for axis, (s, o) in enumerate(zip(x.shape[2:], out)):
            # one [out, in] averaging matrix per spatial dim, applied along that dim
            lo, hi = adaptive_bins(s, o)
            j = np.arange(s)
            m = ((j >= lo[:, None]) & (j < hi[:, None])) / (hi - lo)[:, None].astype(y.dtype)
            y = np.moveaxis(np.tensordot(y, m, axes=([2 + axis], [1])), -1, 2 + axis)
        return y.astype(x.dtype, copy=False)
    return adaptive_avg_pool


for _nd in (1, 2, 3):
    kernel(f"conv{_nd}d")(_make_conv(_nd))
    kernel(f"conv_transpose{_nd}d")(_make_conv_transpose(_nd))
    kernel(f"max_pool{_nd}d")(_make_max_pool(_nd))
    kernel(f"avg_pool{_nd}d")(_make_avg_pool(_nd))
    kernel(f"adaptive_avg_pool{_nd}d")(_make_adaptive_avg_pool(_nd))


# ---- interpolate: source indices exactly as ATen's CPU upsample kernels compute them ----

def _inv_scale(scale, in_size: int, out_size: int, dt) -> np.generic:
    """ATen compute_scales_value: 1/scale_factor when one was given, else in/out, in dtype dt."""
    if scale is not None and scale > 0:
        return dt.type(1.0 / scale)
    return dt.type(in_size) / dt.type(out_size)


def _nearest_index(in_size: int, out_size: int, scale, exact: bool, dt) -> np.ndarray:
    """floorf(i * s) ("nearest") or floorf((i + 0.5) * s) ("nearest-exact"), s = 1/scale or in/out in dt.

    This is ATen's generic CPU rule (1-D, 3-D, and 2-D beyond small sizes). For small 2-D inputs
    ATen picks another kernel that, when a scale_factor is given and out == in or out == 2*in,
    copies or halves the index instead; kiln keeps the one documented rule.
    """
    s = _inv_scale(scale, in_size, out_size, dt)
    src = (np.arange(out_size).astype(dt) + dt.type(0.5 if exact else 0.0)) * s
    return np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), in_size - 1)


def _linear_taps(in_size: int, out_size: int, scale, align_corners: bool, dt):
    """Left/right source indices and their weights along one dim (area_pixel_compute_source_index)."""
    i = np.arange(out_size).astype(dt)
    if out_size == in_size and not align_corners:  # ATen copies, whatever the scale factor
        return np.arange(in_size), np.arange(in_size), np.ones(in_size, dt), np.zeros(in_size, dt)
    if align_corners:
        s = dt.type(in_size - 1) / dt.type(out_size - 1) if out_size > 1 else dt.type(0)
        src = s * i
    else:
        s = _inv_scale(scale, in_size, out_size, dt)
        # s * (i + 0.5) - 0.5 rounded once, as ATen's build computes it (a fused multiply-add);
        # exact in float64 for float32 operands
        src = (np.float64(s) * (i.astype(np.float64) + 0.5) - 0.5).astype(dt)
        src = np.maximum(src, dt.type(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(dt), 0, 1).astype(dt)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (dt.type(1) - lam1), lam1


@kernel("interpolate")
def _interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
    geo = interp_geometry("interpolate", x.shape, size, scale_factor, mode, align_corners, recompute_scale_factor)
    nd = x.ndim - 2
    dt = compute_dtype(x)  # ATen's opmath type: coordinates in float32, or float64 for float64 input
    if mode in ("nearest", "nearest-exact"):
        y = x
        for a, (s, o, sc) in enumerate(zip(x.shape[2:], geo.out_spatial, geo.scales)):
            y = np.take(y, _nearest_index(s, o, sc, mode == "nearest-exact", dt), axis=2 + a)
        return np.ascontiguousarray(y)
    y = up(x)
    for a, (s, o, sc) in enumerate(zip(x.shape[2:], geo.out_spatial, geo.scales)):
        i0, i1, l0, l1 = _linear_taps(s, o, sc, bool(align_corners), dt)
        shape = [1] * nd
        shape[a] = o
        y = np.take(y, i0, axis=2 + a) * l0.reshape(shape) + np.take(y, i1, axis=2 + a) * l1.reshape(shape)
    return y.astype(x.dtype, copy=False)


@kernel("pixel_shuffle")
def _pixel_shuffle(x, upscale_factor):
    r = upscale_factor
    *lead, c, h, w = x.shape
    y = x.reshape(tuple(lead) + (c // (r * r), r, r, h, w))
    k = len(lead)
    y = y.transpose(tuple(range(k)) + (k, k + 3, k + 1, k + 4, k + 2))
    return y.reshape(tuple(lead) + (c // (r * r), h * r, w * r))


@kernel("pixel_unshuffle")
def _pixel_unshuffle(x, downscale_factor):
    r = downscale_factor
    *lead, c, h, w = x.shape
    y = x.reshape(tuple(lead) + (c, h // r, r, w // r, r))
    k = len(lead)
    y = y.transpose(tuple(range(k)) + (k, k + 2, k + 4, k + 1, k + 3))
    return y.reshape(tuple(lead) + (c * r * r, h // r, w // r))
