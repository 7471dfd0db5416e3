"""Images for vision models: decoding with Pillow, RGB conversion, resizing, rescale + normalize.

The steps match HF's Pillow-backed image processors bit for bit: resizing runs on uint8 pixels
through Pillow (the resample filter the processor names), transparency is composited onto
white, `rescale` multiplies in float64 and rounds once to float32, and `normalize` subtracts
and divides in float32. Arrays are channels-first float32 after `to_pixels`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from kiln.errors import InputError
from kiln.extras import require

# HF / Pillow resample codes (PIL.Image.Resampling values)
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def load_image(path: str | os.PathLike):
    """An image file as a decoded Pillow image; InputError naming the file when it is not one."""
    require("PIL", "reading images")
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, expected an image file" if os.path.isdir(path) else "not found"
        raise InputError(f"image file {path!r} {what}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot decode {path!r} as an image (expected PNG, JPEG or another format Pillow reads): "
                         f"{' '.join(str(e).split())}") from None


def rgb_array(image: Any, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] from a Pillow image (any mode; alpha composited onto white, as HF) or an array
    [H, W, 3] / [H, W] of uint8 pixels. Anything else is an InputError naming what was expected."""
    if hasattr(image, "getbands") and hasattr(image, "convert"):
        from PIL import Image

        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            return np.array(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB"))
        return np.array(image.convert("RGB"))
    if isinstance(image, (str, os.PathLike)):
        return rgb_array(load_image(image), what)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(f"{what} must be a Pillow image or a uint8 [height, width, 3] array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        channels = arr.shape[2] if arr.ndim == 3 else None
        raise InputError(f"{what} has {channels} channels (shape {arr.shape}); expected an RGB image "
                         f"[height, width, 3] (or a grayscale [height, width] one)")
    if 0 in arr.shape:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    return arr


def resize(rgb: np.ndarray, height: int, width: int, resample: int = RESAMPLE["bicubic"]) -> np.ndarray:
    """uint8 [H, W, 3] resized by Pillow with the given filter."""
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb
    return np.array(Image.fromarray(rgb).resize((width, height), resample=resample))


def to_pixels(rgb: np.ndarray, rescale: float | None, mean: Sequence[float] | None,
              std: Sequence[float] | None) -> np.ndarray:
    """float32 [3, H, W]: pixels * rescale (float64, rounded once), then (x - mean) / std in float32."""
    x = rgb.transpose(2, 0, 1)
    x = (x.astype(np.float64) * rescale).astype(np.float32) if rescale is not None else x.astype(np.float32)
    if mean is not None:
        m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        s = np.asarray(std, np.float32).reshape(-1, 1, 1)
        x = (x - m) / s
    return np.ascontiguousarray(x, dtype=np.float32)


def fixed_size_pixels(images: Sequence[Any], height: int, width: int, resample: int, rescale: float | None,
                      mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """float32 [N, 3, height, width]: each image (path, Pillow image or uint8 array) as RGB, resized to one
    fixed size, rescaled and normalized (the plain image processor of SigLIP / CLIP-style encoders)."""
    return np.stack([to_pixels(resize(rgb_array(im, f"image {i}"), height, width, resample), rescale, mean, std)
                     for i, im in enumerate(images)])
