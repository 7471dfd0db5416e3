"""Video frames for vision-language models: a directory of frame images, or a video file read with PyAV.

`open_video` returns a `Video`: its frame count and rate (None for a directory: its frames are
taken as already sampled) and `frames(indices)`, which decodes only the frames asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kiln.errors import InputError
from kiln.extras import require

from .image import load_image, rgb_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Video:
    source: str
    total_frames: int
    fps: float | None                               # None: a directory of frames already sampled
    _read: Callable[[Sequence[int]], list[np.ndarray]]

    @property
    def duration(self) -> float | None:
        return self.total_frames / self.fps if self.fps else None

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        """uint8 [H, W, 3] frames at `indices` (ascending)."""
        return self._read(list(indices))


def open_video(path: str | os.PathLike) -> Video:
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"video directory {path!r} holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        return Video(path, len(files), None,
                     lambda idx: [rgb_array(load_image(files[i]), f"frame {files[i]}") for i in idx])
    if not os.path.isfile(path):
        raise InputError(f"video {path!r} not found (expected a video file or a directory of frames)")
    av = require("av", "reading video files")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"{path!r} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            total = stream.frames or sum(1 for _ in container.decode(video=0))
    except av.error.FFmpegError as e:
        raise InputError(f"cannot decode {path!r} as a video: {' '.join(str(e).split())}") from None
    if total == 0 or not fps:
        raise InputError(f"{path!r}: no frames or no frame rate in its video stream")

    def read(indices: list[int]) -> list[np.ndarray]:
        wanted, out = set(indices), {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    out[i] = frame.to_ndarray(format="rgb24")
                if len(out) == len(wanted):
                    break
        missing = [i for i in indices if i not in out]
        if missing:
            raise InputError(f"{path!r}: frames {missing[:5]} could not be decoded ({len(out)} of {len(indices)})")
        return [out[i] for i in indices]

    return Video(path, total, fps, read)
