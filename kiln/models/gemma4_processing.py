"""Gemma 4 unified preprocessing, as HF's processor does it: images to merged patches, audio to frames,
and the prompt's placeholder runs.

Images: RGB, resized (bicubic, aspect ratio kept) to the largest size whose sides are multiples of
patch_size * pooling_kernel_size and that holds at most max_soft_tokens merged patches, scaled to
[0, 1], cut into merged patches (row-major; each patch's pixels row-major, channels last) with their
(x, y) grid positions, padded to max_soft_tokens (zeros, position (-1, -1)). HF cuts 16-px patches
and merges k x k of them; the result is the same as cutting the merged size directly. The resize
is PIL's (HF's PIL image processor); HF's torchvision processor resizes with torchvision instead.
Audio: 16 kHz waveforms zero-padded to a whole number of frames of `audio_samples_per_token`
samples, each frame one soft token; a batch pads to its longest clip (mask False there).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kiln.errors import InputError
from kiln.extras import require

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)
SAMPLING_RATE = 16000


def resized_size(height: int, width: int, patch_size: int, max_patches: int, kernel: int) -> tuple[int, int]:
    """HF's aspect-ratio-preserving target (height, width) for a budget of `max_patches` unmerged patches."""
    factor = math.sqrt(max_patches * patch_size ** 2 / (height * width))
    side = kernel * patch_size
    h, w = int(math.floor(factor * height / side)) * side, int(math.floor(factor * width / side)) * side
    if h == 0 and w == 0:
        raise InputError(f"an image of {height}x{width} pixels resizes to 0x0 merged patches of {side} px")
    longest = (max_patches // kernel ** 2) * side
    if h == 0:
        h, w = side, min(int(math.floor(width / height)) * side, longest)
    elif w == 0:
        h, w = min(int(math.floor(height / width)) * side, longest), side
    return h, w


def image_inputs(images: Sequence, *, patch_size: int, pooling_kernel_size: int, max_soft_tokens: int = 280) -> dict:
    """pixel_values [N, max_soft_tokens, (patch * kernel)^2 * 3] float32, image_position_ids [N, max_soft_tokens, 2]
    int64 and num_soft_tokens_per_image (list) for PIL images, paths or uint8 arrays [H, W, 3]."""
    require("PIL", "Gemma 4 image preprocessing")
    from PIL import Image
    if max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
        raise InputError(f"max_soft_tokens must be one of {SUPPORTED_SOFT_TOKENS}, got {max_soft_tokens}")
    side = patch_size * pooling_kernel_size
    pixels, positions, counts = [], [], []
    for image in images:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError(f"an image array must be uint8 [height, width, 3], got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        elif not isinstance(image, Image.Image):
            image = Image.open(image)
        image = image.convert("RGB")
        h, w = resized_size(image.height, image.width, patch_size, max_soft_tokens * pooling_kernel_size ** 2,
                            pooling_kernel_size)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
        arr = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)
        rows, cols = h // side, w // side
        patches = arr.reshape(rows, side, cols, side, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
        xy = np.stack(np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy"), -1).reshape(-1, 2)
        pad = max_soft_tokens - len(patches)
        pixels.append(np.pad(patches, ((0, pad), (0, 0))))
        positions.append(np.pad(xy, ((0, pad), (0, 0)), constant_values=-1))
        counts.append(len(patches))
    return {"pixel_values": np.stack(pixels), "image_position_ids": np.stack(positions).astype(np.int64),
            "num_soft_tokens_per_image": counts}


def audio_inputs(waveforms: Sequence, *, samples_per_token: int, sampling_rate: int = SAMPLING_RATE) -> dict:
    """input_features [N, frames, samples_per_token] float32 and input_features_mask [N, frames] bool."""
    if sampling_rate != SAMPLING_RATE:
        raise InputError(f"Gemma 4 audio is {SAMPLING_RATE} Hz; resample the {sampling_rate} Hz audio first")
    clips = []
    for w in waveforms:
        w = np.asarray(w)
        if w.ndim != 1 or not np.issubdtype(w.dtype, np.floating) or not len(w):
            raise InputError(f"a waveform must be a non-empty 1-D float array (mono), got {w.dtype} {w.shape}")
        w = np.pad(w, (0, (-len(w)) % samples_per_token))
        clips.append(w.reshape(-1, samples_per_token).astype(np.float32))
    frames = max(len(c) for c in clips)
    feats = np.stack([np.pad(c, ((0, frames - len(c)), (0, 0))) for c in clips])
    mask = np.arange(frames)[None, :] < np.array([len(c) for c in clips])[:, None]
    return {"input_features": feats, "input_features_mask": mask}


def placeholder_run(begin: int, token: int, count: int, end: int) -> list[int]:
    """The ids a processor puts where an image or audio clip goes: begin, token * count, end."""
    return [begin] + [token] * count + [end]


def mm_token_type_ids(ids: np.ndarray, tokens: dict) -> np.ndarray:
    """0 text, 1 image, 2 video, 3 audio (HF's processor)."""
    types = np.zeros(ids.shape, np.int64)
    for value, name in ((1, "image_token_id"), (2, "video_token_id"), (3, "audio_token_id")):
        types[ids == tokens[name]] = value
    return types


def prompt_inputs(ids: Sequence[int], tokens: dict, *, images: dict | None = None, audio: dict | None = None,
                  bos: int | None = None) -> dict:
    """Model inputs for one prompt: each image's and audio clip's placeholder run (as HF's processor expands
    them) inserted after the BOS token (at the start without one), then the prompt's tokens;
    `images` / `audio` are `image_inputs` / `audio_inputs` results. Returns input_ids [1, S],
    mm_token_type_ids and the media arrays."""
    ids = list(ids)
    head = 1 if ids and bos is not None and ids[0] == bos else 0
    runs: list[int] = []
    out: dict = {}
    if images is not None:
        for n in images["num_soft_tokens_per_image"]:
            runs += placeholder_run(tokens["boi_token_id"], tokens["image_token_id"], n, tokens["eoi_token_id"])
        out.update(pixel_values=images["pixel_values"], image_position_ids=images["image_position_ids"])
    if audio is not None:
        for keep in audio["input_features_mask"]:
            runs += placeholder_run(tokens["boa_token_id"], tokens["audio_token_id"], int(keep.sum()),
                                    tokens["eoa_token_index"])
        out.update(input_features=audio["input_features"], input_features_mask=audio["input_features_mask"])
    input_ids = np.array([ids[:head] + runs + ids[head:]], np.int64)
    return {"input_ids": input_ids, "mm_token_type_ids": mm_token_type_ids(input_ids, tokens), **out}
