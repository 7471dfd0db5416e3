"""`kiln run <vjepa2-checkpoint> --video FILE_OR_DIR`: top-5 classes (a classifier) or the embedding shape.

The clip is frames_per_clip frames (from config.json) spread evenly over the video, or all of
them for a shorter one, rounded down to whole tubelets; stderr says which were used.
"""

from __future__ import annotations

import sys

import numpy as np

from kiln.cli_common import fail


def vjepa2_main(args) -> int:
    """args: .model, .video (file or directory of frames), .device, .dtype. Errors loading the checkpoint or
    reading the video propagate (the CLI prints them as one line)."""
    if not getattr(args, "video", None):
        return fail("run", "a V-JEPA 2 checkpoint takes a clip: give --video FILE_OR_DIR (a video file or a "
                           "directory of frame images)")
    if getattr(args, "inputs", None) or getattr(args, "prompt", None) or getattr(args, "image", None):
        return fail("run", "a V-JEPA 2 checkpoint takes only --video (no prompt, images or positional inputs)")

    import kiln
    from kiln.io.video_frames import read_frames, sample_indices
    from kiln.models.vjepa2_processor import preprocess_video

    frames = read_frames(args.video)
    model = kiln.load(args.model, device=args.device, dtype=args.dtype)
    cfg = model.config
    count = min(len(frames), cfg.frames_per_clip) // cfg.tubelet_size * cfg.tubelet_size
    if count == 0:
        return fail("run", f"{args.video} has {len(frames)} frame(s); V-JEPA 2 needs at least {cfg.tubelet_size}")
    index = sample_indices(len(frames), count)
    if count != len(frames):
        print(f"using {count} of {len(frames)} frames, evenly spaced", file=sys.stderr)
    out = model(pixel_values_videos=preprocess_video(frames[index], crop_size=cfg.crop_size))
    if not model.is_classifier:
        print(f"last_hidden_state: {tuple(out['last_hidden_state'].shape)}")
        return 0
    logits = out["logits"][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for i in np.argsort(-probs, kind="stable")[:5]:
        print(f"{probs[i]:.4f}  {cfg.id2label.get(int(i), str(i))}")
    return 0
