"""`kiln run <sam2-checkpoint> --image photo.png --point X,Y [--point ...] [--box X0,Y0,X1,Y1]`: segment
the prompted object, print the IoU scores and write the image with the mask overlaid as a PNG.

All points are foreground clicks of one object (label 1) and the box, if given, bounds the same
object. A single click without a box asks for three candidate masks (SAM's advice for an ambiguous
click) and overlays the one with the highest predicted IoU; otherwise one mask is predicted. The
overlay goes to `<image stem>.mask.png` in the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kiln.cli_common import fail

OVERLAY_COLOR, OVERLAY_ALPHA = np.array([30, 144, 255], np.float32), 0.5


def segment_main(args) -> int:
    from kiln.extras import require

    images = list(args.image or [])
    if len(images) != 1:
        return fail("run", f"give exactly one --image for a SAM 2 checkpoint, got {len(images)}")
    if getattr(args, "inputs", None):
        return fail("run", f"positional inputs {args.inputs} are for speech models; SAM 2 takes --image")
    points, box = list(args.point or []), args.box
    if not points and box is None:
        return fail("run", "give a prompt: one or more --point X,Y clicks and/or a --box X0,Y0,X1,Y1")
    path = images[0]
    if not os.path.isfile(path):
        return fail("run", f"image {path!r} not found")
    require("PIL", "reading images for SAM 2")
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        return fail("run", f"cannot read {path!r} as an image: {e}")

    import kiln

    model = kiln.load(args.model, device=args.device, dtype=args.dtype)
    multimask = len(points) == 1 and box is None
    inputs = model.processor(image, input_points=[[list(map(list, points))]] if points else None,
                             input_labels=[[[1] * len(points)]] if points else None,
                             input_boxes=[[list(box)]] if box is not None else None)
    out = model(pixel_values=inputs["pixel_values"], input_points=inputs.get("input_points"),
                input_labels=inputs.get("input_labels"), input_boxes=inputs.get("input_boxes"),
                multimask_output=multimask)
    scores = out["iou_scores"][0, 0]
    best = int(np.argmax(scores))
    mask = model.processor.post_process_masks(out["pred_masks"], inputs["original_sizes"])[0][0, best]
    target = Path.cwd() / f"{Path(path).stem}.mask.png"
    overlay(np.asarray(image), mask).save(target)
    print(f"iou_scores: {' '.join(f'{s:.4f}' for s in scores)}")
    print(f"mask {best} ({int(mask.sum())} pixels) overlaid in {target}")
    return 0


def overlay(image: np.ndarray, mask: np.ndarray):
    """The image with the mask's pixels blended toward a blue, as a PIL image."""
    from PIL import Image

    out = image.astype(np.float32)
    out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * OVERLAY_COLOR
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
