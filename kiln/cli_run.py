"""`kiln run <checkpoint> --prompt ...`: generate text with a language model, streaming it to stdout.

Progress bars (loading, compiling) and the timing summary go to stderr, so stdout
carries only the text: the prompt (not in --chat mode) and its continuation.
Families that do not generate text from a prompt register their own handler in
kiln.models.registry.CLI_RUNNERS (speech models take audio files instead).
"""

from __future__ import annotations

import inspect
import sys
import time

from kiln.cli_common import COMMAND_FOR, check_device, kind_of, resolve_checkpoint


def run_main(args) -> int:
    """`kiln run`: errors propagate to kiln.cli.main, which prints them as one line (exit 2).

    With --trace, every kernel launch of the run goes to a Chrome/Perfetto trace file."""
    check_device(args.device)
    path = getattr(args, "trace", None)
    if path is None:
        return _run(args)
    from pathlib import Path

    from kiln.runtime.trace import tracing

    if not Path(path).resolve().parent.is_dir():
        raise ValueError(f"--trace {path}: the directory {Path(path).resolve().parent} does not exist")
    with tracing() as trace:
        code = _run(args)
    launches = trace.write(path)
    print(f"[trace: {launches} kernel launches in {trace.runs} runs written to {path}; open it in ui.perfetto.dev]",
          file=sys.stderr)
    return code


def _run(args) -> int:
    from kiln.models.registry import cli_runner_for

    ck = resolve_checkpoint(args.model)
    directory, model_type = ck.path, kind_of(ck)
    runner = cli_runner_for(model_type)
    if runner is not None:
        return runner(args)
    if model_type in COMMAND_FOR:
        raise ValueError(f"{directory} is a {model_type!r} checkpoint, which does not generate text; "
                         f"use `{COMMAND_FOR[model_type].format(path=directory)}`")
    loader = ck.loader()
    if getattr(args, "inputs", None):
        raise ValueError(f"positional inputs {args.inputs} are for speech models; "
                         f"a {model_type!r} language model takes --prompt")
    if args.prompt is None:
        raise ValueError(f"give the text to continue with --prompt (this is a {model_type!r} language model)")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")

    options = {"progress": True} if "progress" in inspect.signature(loader).parameters else {}
    t0 = time.perf_counter()
    model = loader(directory, device=args.device, dtype=args.dtype, **options)
    load_s = time.perf_counter() - t0
    if not hasattr(model, "generate_text"):
        raise ValueError(f"model_type {model_type!r} does not generate text; `kiln run --prompt` needs a language model")
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{directory}: no tokenizer, so the prompt cannot be tokenized")

    if args.chat:
        ids = tok.encode_chat([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
    else:
        ids = tok.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens")

    # compile both graphs up front (with a progress bar) so the timing below is generation only
    # (greedy decoding picks its tokens on the device: those are the graphs it runs)
    model.warmup(1, len(ids), args.max_new_tokens, progress=True, select="logits" if args.do_sample else "greedy")

    from kiln.runtime.generation import TextStreamer

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if not args.chat:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True, on_text=show)
    start = time.perf_counter()
    out = model.generate([ids], max_new_tokens=args.max_new_tokens,
                         do_sample=True if args.do_sample else None,
                         temperature=args.temperature if args.do_sample else None,
                         top_k=args.top_k, top_p=args.top_p, streamer=streamer,
                         seed=getattr(args, "seed", None))
    end = time.perf_counter()
    sys.stdout.write("\n")
    sys.stdout.flush()

    n_new = out.shape[1] - len(ids)
    total = end - start
    print(f"[{n_new} tokens in {total:.2f} s: {n_new / total:.1f} tokens/s | prompt {len(ids)} tokens | "
          f"load {load_s:.2f} s, compile {model.compile_seconds:.2f} s]", file=sys.stderr)
    return 0
