"""`kiln run <gemma4_unified checkpoint> --image photo.png [audio.wav ...] --prompt ...`: describe images /
audio with Gemma 4 unified, streaming the text to stdout.

Each image and audio clip becomes its placeholder run after the BOS token, before the prompt
(kiln.models.gemma4_processing.prompt_inputs); images are preprocessed as HF's processor does
(max_soft_tokens from the checkpoint's preprocessor_config.json, else 280), audio must be 16 kHz mono.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kiln.cli_common import fail


def max_soft_tokens(directory: Path, default: int = 280) -> int:
    """`max_soft_tokens` of the checkpoint's image processor config, when it has one."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        f = directory / name
        if f.is_file():
            cfg = json.loads(f.read_text())
            cfg = cfg.get("image_processor", cfg)
            if isinstance(cfg.get("max_soft_tokens"), int):
                return cfg["max_soft_tokens"]
    return default


def gemma4_unified_main(args) -> int:
    """args: .model, .image (paths), .inputs (audio paths), .prompt, .chat, .max_new_tokens, sampling
    options, .device, .dtype. Bad paths print one error line and return 2 before the model loads."""
    if args.prompt is None:
        return fail("run", "give the text with --prompt (a Gemma 4 unified model answers about --image / audio)")
    images, clips = list(args.image or []), list(args.inputs or [])
    for path in images + clips:
        if not os.path.isfile(path):
            return fail("run", f"input file {path!r} not found")

    import kiln
    from kiln.cli_common import resolve_checkpoint
    from kiln.extras import require
    from kiln.models.gemma4_processing import audio_inputs, image_inputs, prompt_inputs
    from kiln.runtime.generation import TextStreamer

    model = kiln.load(args.model, device=args.device, dtype=args.dtype)
    cfg, tok = model.config, model.tokenizer
    if tok is None:
        return fail("run", f"{args.model}: no tokenizer.json, so the prompt cannot be tokenized")
    image_in = audio_in = None
    if images:
        if cfg.vision is None:
            return fail("run", f"{args.model} has no vision embedder; it cannot take --image")
        image_in = image_inputs(images, patch_size=cfg.vision.patch_size,
                                pooling_kernel_size=cfg.vision.pooling_kernel_size,
                                max_soft_tokens=max_soft_tokens(resolve_checkpoint(args.model).path))
    if clips:
        if cfg.audio_dim is None:
            return fail("run", f"{args.model} has no audio embedder; it cannot take audio files")
        soundfile = require("soundfile", "reading audio files")
        waves = []
        for path in clips:
            wave, rate = soundfile.read(path, dtype="float32")
            if wave.ndim != 1:
                return fail("run", f"{path}: {wave.shape[1]} channels; Gemma 4 takes mono audio")
            if rate != 16000:
                return fail("run", f"{path}: {rate} Hz; Gemma 4 takes 16 kHz audio (resample it first)")
            waves.append(wave)
        audio_in = audio_inputs(waves, samples_per_token=cfg.audio_dim)
    ids = (tok.encode_chat([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
           if args.chat else tok.encode(args.prompt))
    inputs = prompt_inputs(ids, cfg.tokens, images=image_in, audio=audio_in, bos=tok.bos_token_id)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True, on_text=show)
    model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=True if args.do_sample else None,
                   temperature=args.temperature if args.do_sample else None, top_k=args.top_k, top_p=args.top_p,
                   streamer=streamer, seed=getattr(args, "seed", None))
    sys.stdout.write("\n")
    return 0
