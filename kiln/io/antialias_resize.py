"""Antialiased bilinear resize of uint8 images, bit-exact with torch's CPU kernel
(`interpolate(uint8, mode="bilinear", antialias=True)`, what torchvision's `resize` runs on uint8
tensors and so what HF's torchvision image processors compute).

Per axis: a triangle filter stretched by the downscale factor, weights normalized, then rounded to
int16 fixed point with the largest precision that keeps the biggest weight in int16; the sums are
rounded and clamped to uint8. The width is resized first, into a uint8 image, then the height.
"""

from __future__ import annotations

import numpy as np


def _fixed_point_taps(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """[n_out, n_in] integer weights and their precision (bits)."""
    scale = n_in / n_out
    support, inv = (scale, 1.0 / scale) if scale >= 1 else (1.0, 1.0)
    rows = []
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        w = np.clip(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * inv), 0.0, None)
        rows.append((lo, w / w.sum() if w.sum() else w))
    w_max = max(w.max() for _, w in rows)
    bits = 0
    while bits < 22 and int(0.5 + w_max * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    m = np.zeros((n_out, n_in), np.int64)
    for i, (lo, w) in enumerate(rows):
        v = w * (1 << bits)
        m[i, lo:lo + len(w)] = np.where(v < 0, (v - 0.5).astype(np.int64), (v + 0.5).astype(np.int64))
    return m, bits


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    if x.shape[axis] == n_out:
        return x
    m, bits = _fixed_point_taps(x.shape[axis], n_out)
    y = np.tensordot(np.moveaxis(x.astype(np.int64), axis, -1), m.T, axes=1)
    y = np.clip((y + (1 << (bits - 1))) >> bits, 0, 255).astype(np.uint8)
    return np.moveaxis(y, -1, axis)


def resize_bilinear_antialias(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x C uint8 -> height x width x C uint8."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an H x W x C uint8 image, got {image.dtype} of shape {image.shape}")
    return _resize_axis(_resize_axis(image, width, 1), height, 0)
