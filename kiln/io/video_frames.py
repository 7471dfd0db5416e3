"""Video frames as uint8 RGB [T, H, W, 3]: from a directory of images (Pillow) or a video file (PyAV).

A directory's images are taken in name order (numbers in names compare as numbers, so frame_2
comes before frame_10); every frame must have the same size. Both readers are optional extras
(`require` names the install command when one is missing).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from kiln.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    files = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise InputError(f"{d}: no image files ({', '.join(IMAGE_SUFFIXES)}) to read as video frames")
    return files


def read_frame_dir(directory: str | os.PathLike) -> np.ndarray:
    from kiln.extras import require

    require("PIL", "reading video frames from images")
    from PIL import Image as image
    frames = []
    for path in frame_files(directory):
        try:
            with image.open(path) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except (OSError, SyntaxError) as e:
            raise InputError(f"{path}: cannot read as an image: {e}") from None
        if frames[-1].shape != frames[0].shape:
            raise InputError(f"{path}: frame of {frames[-1].shape[1]}x{frames[-1].shape[0]} pixels, but the first "
                             f"frame is {frames[0].shape[1]}x{frames[0].shape[0]}; all frames must have one size")
    return np.stack(frames)


def read_video_file(path: str | os.PathLike) -> np.ndarray:
    from kiln.extras import require

    av = require("av", "reading video files")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    except av.FFmpegError as e:
        raise InputError(f"{path}: cannot decode as video: {e}") from None
    if not frames:
        raise InputError(f"{path}: the video stream has no frames")
    return np.stack(frames)


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] of a video file or a directory of frame images."""
    p = Path(path)
    if p.is_dir():
        return read_frame_dir(p)
    if p.is_file():
        return read_video_file(p)
    raise InputError(f"video {str(path)!r} not found (expected a video file or a directory of frames)")


def sample_indices(total: int, count: int) -> np.ndarray:
    """`count` frame indices spread evenly over `total` frames (all of them when count >= total)."""
    if count >= total:
        return np.arange(total)
    return np.floor(np.arange(count) * (total / count)).astype(np.int64)
