"""Spatial helpers for channels-last feature maps [B, H, W, C]: non-overlapping windows, max pooling by
a stride, nearest 2x upsampling, and a bicubic resize written as two constant matrices.

Windowed attention (Hiera, ViTDet) attends within `size` x `size` tiles: `window_partition` pads the map
to a multiple of the window and stacks the tiles as batch rows; `window_unpartition` undoes it and crops.
All of these are reshapes, transposes and reductions, so they run as views or plain kernels on every
backend (no host round trip).
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import Graph, Value


def window_partition(g: Graph, x: Value, size: int) -> tuple[Value, tuple[int, int]]:
    """[B, H, W, C] -> ([B * nH * nW, size, size, C], (padded H, padded W)), zero-padding bottom/right."""
    b, h, w, c = x.shape
    ph, pw = (-h) % size, (-w) % size
    if ph or pw:
        x = g.pad(x, pads=[[0, 0], [0, ph], [0, pw], [0, 0]])
    hp, wp = h + ph, w + pw
    x = g.reshape(x, shape=[b, hp // size, size, wp // size, size, c])
    x = g.transpose(x, perm=[0, 1, 3, 2, 4, 5])
    return g.reshape(x, shape=[b * (hp // size) * (wp // size), size, size, c]), (hp, wp)


def window_unpartition(g: Graph, windows: Value, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> Value:
    """Windows [B * nH * nW, size, size, C] -> [B, H, W, C]: tiles back in place, padding cropped."""
    hp, wp = padded
    nh, nw = hp // size, wp // size
    c = windows.shape[-1]
    b = windows.shape[0] // (nh * nw)
    x = g.reshape(windows, shape=[b, nh, nw, size, size, c])
    x = g.reshape(g.transpose(x, perm=[0, 1, 3, 2, 4, 5]), shape=[b, hp, wp, c])
    h, w = hw
    if (h, w) != (hp, wp):
        x = g.slice(x, axes=[1, 2], starts=[0, 0], ends=[h, w])
    return x


def max_pool_stride(g: Graph, x: Value, stride: tuple[int, int]) -> Value:
    """max_pool2d(kernel = stride = `stride`, floor mode) over [B, H, W, C], one axis at a time."""
    b, h, w, c = x.shape
    sh, sw = stride
    oh, ow = h // sh, w // sw
    if (oh * sh, ow * sw) != (h, w):
        x = g.slice(x, axes=[1, 2], starts=[0, 0], ends=[oh * sh, ow * sw])
    x = g.max(g.reshape(x, shape=[b, oh, sh, ow, sw, c]), axes=[4])
    return g.max(x, axes=[2])


def upsample_nearest2x(g: Graph, x: Value) -> Value:
    """interpolate(scale_factor=2, mode="nearest") of [B, C, H, W], as a broadcast."""
    b, c, h, w = x.shape
    x = g.broadcast_to(g.reshape(x, shape=[b, c, h, 1, w, 1]), shape=[b, c, h, 2, w, 2])
    return g.reshape(x, shape=[b, c, 2 * h, 2 * w])


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """float32 [n_out, n_in]: torch's bicubic resize along one axis (align_corners=False, borders clamped)
    as a matrix, so resizing a [.., n_in] axis is one matmul (out = M @ x)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    for o in range(n_out):
        src = scale * (o + 0.5) - 0.5
        i0 = math.floor(src)
        t = src - i0
        for k, wgt in zip(range(-1, 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[o, min(max(i0 + k, 0), n_in - 1)] += wgt
    return m.astype(np.float32)


def resize_bicubic(g: Graph, x: Value, size: tuple[int, int]) -> Value:
    """interpolate(x [C, h, w], size, mode="bicubic") -> [C, H, W], as two matmuls with constant matrices."""
    c, h, w = x.shape
    oh, ow = size
    rows = g.constant(bicubic_matrix(h, oh), name=f"bicubic_{h}_{oh}")
    cols = g.constant(bicubic_matrix(w, ow).T.copy(), name=f"bicubic_{w}_{ow}_t")
    y = g.reshape(g.transpose(x, perm=[1, 0, 2]), shape=[h, c * w])            # [h, C*w]
    y = g.reshape(g.matmul(rows, y), shape=[oh * c, w])                         # [H*C, w]
    y = g.reshape(g.matmul(y, cols), shape=[oh, c, ow])                         # [H, C, W]
    return g.transpose(y, perm=[1, 0, 2])
