"""V-JEPA 2's video preprocessing, as HF's VJEPA2VideoProcessor does it (NumPy only).

Frames (uint8 RGB) are resized so their short side is int(crop_size * 256 / 224) (the long side
int(short * long / short_in)), with antialiased bilinear resampling on uint8 the way torch's CPU
kernel (what torchvision calls for uint8 frames) computes it: per output pixel a triangle filter
stretched by the downscale factor, weights normalized, then rounded to int16 fixed point; the
width pass first, rounded to uint8, then the height pass. Then a center crop of crop_size,
(x - 255 * mean) / (255 * std) in float32 with ImageNet's mean and std, and [B, T, C, H, W].
"""

from __future__ import annotations

import numpy as np

from kiln.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) with the short side `shortest_edge` and the aspect ratio kept (long side truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def _filter_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(source indices [out, K], int16 fixed-point weights [out, K], precision bits) of the bilinear filter."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    rows = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), in_size) - xmin
        x = (np.arange(xsize) + xmin - center + 0.5) * invscale
        w = np.where(np.abs(x) < 1.0, 1.0 - np.abs(x), 0.0)
        total = w.sum()
        rows.append((xmin, w / total if total != 0.0 else w))
    k = max(len(w) for _, w in rows)
    index = np.zeros((out_size, k), np.int64)
    weight = np.zeros((out_size, k), np.float64)
    for i, (xmin, w) in enumerate(rows):
        index[i, :len(w)] = np.arange(xmin, xmin + len(w))
        index[i, len(w):] = xmin
        weight[i, :len(w)] = w
    top = weight.max()
    precision = 0
    while precision < 22 and int(0.5 + top * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weight * (1 << precision)
    fixed = np.where(scaled < 0, (-0.5 + scaled).astype(np.int64), (0.5 + scaled).astype(np.int64))
    return index, fixed, precision


def _resample_last_axis(x: np.ndarray, out_size: int) -> np.ndarray:
    if x.shape[-1] == out_size:
        return x
    index, weight, precision = _filter_weights(x.shape[-1], out_size)
    acc = np.full(x.shape[:-1] + (out_size,), 1 << (precision - 1), np.int64)
    for j in range(index.shape[1]):
        acc += x[..., index[:, j]].astype(np.int64) * weight[:, j]
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def resize_bilinear_antialiased(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., H, W] -> uint8 [..., height, width]: width pass, then height pass."""
    x = _resample_last_axis(frames, width)
    return np.swapaxes(_resample_last_axis(np.swapaxes(x, -1, -2), height), -1, -2)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """[..., H, W] -> [..., size, size] from the middle (top/left offsets truncated, as HF)."""
    h, w = frames.shape[-2:]
    if h < size or w < size:
        raise InputError(f"frames of {h}x{w} are smaller than the {size}x{size} center crop")
    top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    return frames[..., top:top + size, left:left + size]


def preprocess_video(frames, crop_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """One clip of uint8 RGB frames [T, H, W, 3] -> pixel_values_videos float32 [1, T, 3, crop, crop]."""
    video = np.asarray(frames)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise InputError(f"a video must be uint8 RGB frames [frames, height, width, 3], got {video.dtype} "
                         f"{video.shape}")
    chw = np.ascontiguousarray(video.transpose(0, 3, 1, 2))
    h, w = resize_size(chw.shape[2], chw.shape[3], int(crop_size * 256 / 224))
    chw = center_crop(resize_bilinear_antialiased(chw, h, w), crop_size)
    m = (np.asarray(mean, np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
    s = (np.asarray(std, np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
    return ((chw.astype(np.float32) - m) / s)[None]
