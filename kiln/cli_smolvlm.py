"""`kiln run <smolvlm-checkpoint> --image a.png [--image b.png] [--video clip.mp4|frames/] --prompt ...`:
describe images or a video. The prompt goes through the checkpoint's chat template (one user turn:
the images, then the text) and the reply streams to stdout."""

from __future__ import annotations

import sys

from kiln.cli_common import fail


def smolvlm_main(args) -> int:
    """Every image is decoded before the model loads: a bad file prints one error line and returns 2."""
    from kiln.errors import InputError
    from kiln.io.image import load_image

    if args.prompt is None:
        return fail("run", "give the question or instruction with --prompt (and the images with --image)")
    if getattr(args, "inputs", None):
        return fail("run", f"positional inputs {args.inputs} are for speech models; give images with --image")
    try:
        images = [load_image(p) for p in args.image]
        if args.video is not None:
            from kiln.io.video import open_video

            open_video(args.video)
    except InputError as e:
        return fail("run", str(e))

    import kiln
    from kiln.runtime.generation import TextStreamer

    model = kiln.load(args.model, device=args.device, dtype=args.dtype)
    if model.processor is None:
        return fail("run", f"{args.model}: no processor_config.json / preprocessor_config.json, so images cannot "
                           f"be prepared")

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        inputs = model.processor.chat(args.prompt, images=images, video=args.video)
        streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True, on_text=show)
        model.generate(inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"),
                       inputs.get("pixel_attention_mask"), max_new_tokens=args.max_new_tokens,
                       do_sample=True if args.do_sample else None,
                       temperature=args.temperature if args.do_sample else None, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed, streamer=streamer)
    except InputError as e:
        return fail("run", str(e))
    sys.stdout.write("\n")
    return 0
