"""SAM 2 pre- and post-processing, as HF's `Sam2Processor` / `Sam2ImageProcessor` do it (host NumPy and
Pillow; the model's math stays in the compiled graphs).

* images: RGB, resized to size x size (bilinear, antialiased, bit-exact with torchvision on uint8; the
  aspect ratio is not kept), scaled by
  1/255 and normalized with the ImageNet mean and std (HF fuses the two: (x - 255 mean) / (255 std));
* points and boxes: from original-image pixels to resized-input pixels (x * S / W, y * S / H, in float32),
  padding points (-10) left as they are;
* masks: the low-resolution logits resized (bilinear, align_corners=False) straight to the original
  image size and thresholded (`post_process_masks`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.errors import InputError
from kiln.files import read_json_if_present
from kiln.io.antialias_resize import resize_bilinear_antialias
from kiln.io.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PAD_VALUE = -10


class Sam2Processor:
    def __init__(self, size: int = 1024, mean=IMAGENET_MEAN, std=IMAGENET_STD, rescale_factor: float = 1 / 255):
        self.size, self.mean, self.std, self.rescale_factor = size, tuple(mean), tuple(std), rescale_factor

    @classmethod
    def from_dir(cls, d: Path, cfg) -> "Sam2Processor":
        """From the checkpoint's preprocessor_config.json (or processor_config.json) when present."""
        for name in ("preprocessor_config.json", "processor_config.json"):
            pc = read_json_if_present(Path(d) / name, "SAM 2 processor config", ConfigError)
            if pc is None:
                continue
            pc = pc.get("image_processor", pc)
            size = pc.get("size") or {}
            h, w = size.get("height", cfg.image_size), size.get("width", cfg.image_size)
            if h != w or h != cfg.image_size:
                raise ConfigError(f"{Path(d) / name}: size {size} must be the model's square input "
                                  f"{cfg.image_size}x{cfg.image_size}")
            return cls(h, pc.get("image_mean", IMAGENET_MEAN), pc.get("image_std", IMAGENET_STD),
                       pc.get("rescale_factor", 1 / 255))
        return cls(cfg.image_size)

    # ---- images ----------------------------------------------------------------------------

    def preprocess(self, images) -> dict:
        """pixel_values [B, 3, S, S] float32 and original_sizes [(H, W)] for PIL images or HxWx3 uint8 arrays."""
        from kiln.extras import require

        pil = require("PIL", "reading and resizing images for SAM 2")
        from PIL import Image

        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise InputError("images is empty; give at least one image")
        pixels, sizes = [], []
        for i, im in enumerate(images):
            if isinstance(im, np.ndarray):
                if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] not in (3, 4):
                    raise InputError(f"images[{i}] must be a PIL image or an HxWx3 uint8 array, got "
                                     f"{im.dtype} array of shape {im.shape}")
                im = Image.fromarray(im)
            elif not isinstance(im, pil.Image.Image):
                raise InputError(f"images[{i}] must be a PIL image or an HxWx3 uint8 array, got {type(im).__name__}")
            im = im.convert("RGB")
            sizes.append((im.height, im.width))
            resized = resize_bilinear_antialias(np.asarray(im, dtype=np.uint8), self.size, self.size)
            pixels.append(self.normalize(resized))
        return {"pixel_values": np.stack(pixels), "original_sizes": sizes}

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> 3xHxW float32, (x - 255 mean) / (255 std) as HF's fused rescale + normalize."""
        inv = np.float32(1.0 / self.rescale_factor)
        mean = (np.asarray(self.mean, np.float32) * inv).astype(np.float32)
        std = (np.asarray(self.std, np.float32) * inv).astype(np.float32)
        x = image.astype(np.float32).transpose(2, 0, 1)
        return ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)

    # ---- prompts ---------------------------------------------------------------------------

    def __call__(self, images, input_points=None, input_labels=None, input_boxes=None) -> dict:
        """HF's processor outputs as NumPy: pixel_values, original_sizes, input_points [B, P, N, 2],
        input_labels [B, P, N], input_boxes [B, P, 4]; coordinates in original-image pixels in."""
        out = self.preprocess(images)
        sizes = out["original_sizes"]
        if input_points is not None:
            out["input_points"] = self.scale_points(input_points, sizes)
            if input_labels is None:
                raise InputError("input_points were given without input_labels (1 foreground, 0 background)")
        if input_labels is not None:
            labels = np.asarray(pad_ragged(input_labels, 3))
            if input_points is None:
                raise InputError("input_labels were given without input_points")
            if not np.issubdtype(labels.dtype, np.integer):
                raise InputError(f"input_labels must be integers, got dtype {labels.dtype}")
            if labels.shape != out["input_points"].shape[:3]:
                raise InputError(f"input_labels has shape {labels.shape} but input_points has "
                                 f"{out['input_points'].shape[:3]} points: give one label per point")
            out["input_labels"] = labels.astype(np.int64)
        if input_boxes is not None:
            out["input_boxes"] = self.scale_boxes(input_boxes, sizes)
        return out

    def scale_points(self, points, original_sizes) -> np.ndarray:
        """[B, P, N, 2] original-image (x, y) -> model-input pixels; (-10, -10) padding points are kept."""
        pts = _array("input_points", pad_ragged(points, 3), 4, 2)
        if pts.shape[0] != len(original_sizes):
            raise InputError(f"input_points covers {pts.shape[0]} images, expected {len(original_sizes)}")
        pad = (pts == PAD_VALUE).all(axis=-1)
        for b, (h, w) in enumerate(original_sizes):
            bad = ~pad[b] & ((pts[b, ..., 0] < 0) | (pts[b, ..., 0] > w) | (pts[b, ..., 1] < 0) | (pts[b, ..., 1] > h))
            if bad.any():
                idx = (b, *(int(i) for i in np.argwhere(bad)[0]))
                raise InputError(f"input_points{list(idx)} = {pts[idx].tolist()} lies outside image {b} "
                                 f"({w}x{h} pixels, x in [0, {w}], y in [0, {h}])")
        out = pts.copy()
        for b, (h, w) in enumerate(original_sizes):
            scaled = self._scale(pts[b], h, w)
            out[b] = np.where(pad[b][..., None], pts[b], scaled)
        return out

    def scale_boxes(self, boxes, original_sizes) -> np.ndarray:
        """[B, P, 4] original-image (x0, y0, x1, y1) -> model-input pixels."""
        bx = _array("input_boxes", boxes, 3, 4)
        if bx.shape[0] != len(original_sizes):
            raise InputError(f"input_boxes covers {bx.shape[0]} images, expected {len(original_sizes)}")
        out = np.empty_like(bx)
        for b, (h, w) in enumerate(original_sizes):
            for p, box in enumerate(bx[b]):
                x0, y0, x1, y1 = box.tolist()
                if x1 < x0 or y1 < y0:
                    raise InputError(f"input_boxes[{b}, {p}] = {box.tolist()} is malformed: expected (x0, y0, x1, y1) "
                                     f"with x0 <= x1 and y0 <= y1")
                if min(x0, y0) < 0 or x1 > w or y1 > h:
                    raise InputError(f"input_boxes[{b}, {p}] = {box.tolist()} lies outside image {b} ({w}x{h} pixels)")
            out[b] = self._scale(bx[b].reshape(-1, 2, 2), h, w).reshape(bx[b].shape)
        return out

    def _scale(self, coords: np.ndarray, h: int, w: int) -> np.ndarray:
        out = coords.astype(np.float32).copy()
        out[..., 0] = out[..., 0] * np.float32(self.size / w)
        out[..., 1] = out[..., 1] * np.float32(self.size / h)
        return out

    # ---- masks -----------------------------------------------------------------------------

    def post_process_masks(self, masks, original_sizes, mask_threshold: float = 0.0, binarize: bool = True) -> list:
        """Per image: its masks [P, K, h, w] resized (bilinear) to the original (H, W), then > threshold."""
        from kiln.backends.numpy.kernels import KERNELS  # the bilinear resize as ATen computes it

        if len(masks) != len(original_sizes):
            raise InputError(f"got masks for {len(masks)} images but {len(original_sizes)} original sizes")
        out = []
        for i, (m, size) in enumerate(zip(masks, original_sizes)):
            m = np.asarray(m)
            if m.ndim != 4 or not np.issubdtype(m.dtype, np.floating):
                raise InputError(f"masks[{i}] must be float [prompts, masks, h, w], got {m.dtype} shape {m.shape}")
            up = KERNELS["interpolate"](m, size=[int(size[0]), int(size[1])], mode="bilinear", align_corners=False)
            out.append(up > mask_threshold if binarize else up)
        return out


def pad_ragged(data, levels: int, pad=PAD_VALUE):
    """Nested lists whose first `levels` levels differ in length, padded with `pad` entries to the longest
    (HF's processor pads points per object and objects per image this way); arrays pass through."""
    if not isinstance(data, (list, tuple)):
        return data

    def dims(x, depth):
        if depth == 0 or not isinstance(x, (list, tuple)):
            return []
        subs = [dims(item, depth - 1) for item in x]
        inner = [max(d[i] for d in subs if len(d) > i) for i in range(max((len(d) for d in subs), default=0))]
        return [len(x)] + inner

    target = dims(data, levels)
    first = data
    for _ in range(levels):  # one item below the padded levels: its shape is the padding's (a pair, a scalar)
        if not isinstance(first, (list, tuple)) or not first:
            return data  # malformed: the shape check names it
        first = first[0]
    leaf = np.shape(first)

    def fill(x, depth):
        if depth == levels:
            return x
        items = [fill(item, depth + 1) for item in x] if isinstance(x, (list, tuple)) else x
        if not isinstance(items, list):
            return items
        blank = np.full((*target[depth + 1:], *leaf), pad).tolist()
        return items + [blank] * (target[depth] - len(items))

    return fill(data, 0)


def _array(name: str, a, ndim: int, last: int) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{name} must be a nested list or array of numbers, got {a!r:.80}") from None
    if arr.ndim != ndim or arr.shape[-1] != last:
        raise InputError(f"{name} must have {ndim} levels with {last} numbers last, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return arr.astype(np.float32)
