"""The `kiln` command line: run, embed, train, inspect, bench.

At the top this module imports only argparse and kiln.cli_common (standard library only); each
subcommand imports its implementation when it runs, so `kiln --help` does not load NumPy, torch
or egglog (the `kiln` package itself is lazy). Bad input (kiln's own
errors, bad arguments, missing files, missing extras) prints one `kiln CMD: error: ...` line and
exits 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from kiln.cli_common import DEVICES, DTYPES, check_choice, fail, numbers, positive_float, positive_int, probability, user_error


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _run(args):
    from kiln.cli_run import run_main
    return run_main(args)


def _embed(args):
    from kiln.cli_embed import embed_main
    return embed_main(args)


def _train(args):
    from kiln.cli_train import train_main
    return train_main(args)


def _bench(args):
    from kiln.cli_bench import bench_main
    return bench_main(args)


def _inspect(args):
    from kiln.inspect import inspect_main

    check_choice("--dtype", args.dtype, DTYPES)
    return inspect_main(args)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    p = _Parser(prog="kiln", description="kiln: an ML compiler and runtime.",
                epilog="`kiln COMMAND --help` lists a command's options.")
    p.add_argument("--version", action="version", version="kiln 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, help="one of:")

    r = sub.add_parser("run", parents=[common], help="run a checkpoint: generate text (LMs) or transcribe audio (Whisper)",
                       description="Generate text with a language model (Llama 3 / SmolLM2, Mistral, Qwen2, Qwen3) "
                                   "or transcribe audio files with Whisper.")
    r.add_argument("model", help="checkpoint directory or model id in the local HF cache")
    r.add_argument("inputs", nargs="*", help="audio file(s) for speech models (WAV, FLAC, OGG)")
    r.add_argument("--prompt", default=None, help="prompt text for language models")
    r.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    r.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default: 32)")
    r.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    r.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (with --do-sample)")
    r.add_argument("--top-k", type=positive_int, default=None, help="sample from the k most likely tokens")
    r.add_argument("--top-p", type=probability, default=None, help="nucleus sampling: smallest set with this mass")
    r.add_argument("--seed", type=int, default=None, help="random seed for --do-sample")
    r.add_argument("--language", default=None, help="speech models: spoken language, e.g. en (default: detect)")
    r.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                   help="speech models: transcribe, or translate to English")
    r.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image input for vision models (repeat for several images)")
    r.add_argument("--video", default=None, metavar="FILE_OR_DIR",
                   help="video models: a video file or a directory of frames")
    r.add_argument("--point", action="append", default=[], type=numbers(2, "a point X,Y"), metavar="X,Y",
                   help="segmentation models: a foreground click in image pixels (repeat for several)")
    r.add_argument("--box", default=None, type=numbers(4, "a box X0,Y0,X1,Y1"), metavar="X0,Y0,X1,Y1",
                   help="segmentation models: a box prompt in image pixels")
    r.add_argument("--trace", default=None, metavar="TRACE.json",
                   help="write a Chrome/Perfetto trace of every kernel launch (open it in ui.perfetto.dev)")
    _device_dtype(r)
    r.set_defaults(func=_run)

    e = sub.add_parser("embed", parents=[common], help="sentence embeddings and similarity ranking (BERT family)",
                       description="Sentence embeddings with a BERT / sentence-transformers checkpoint.")
    e.add_argument("sentences", nargs="*", help="sentences; with --similarity the first is the query")
    e.add_argument("--model", default=None, help="checkpoint dir or cached model id (default: the all-MiniLM-L6-v2 package)")
    e.add_argument("--similarity", action="store_true", help="rank the other sentences by cosine similarity to the first")
    e.add_argument("--file", default=None, help="read more sentences from a text file, one per line")
    e.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default: 32)")
    e.add_argument("--out", default=None, metavar="PATH.npy", help="save the embeddings [n, dim] (float32, input order) as .npy")
    e.add_argument("--json", action="store_true", help="print the embeddings (or the ranking) as JSON")
    _device_dtype(e)
    e.set_defaults(func=_embed)

    t = sub.add_parser("train", parents=[common], help="train a built-in example (digits; needs the train extra)",
                       description="Train a built-in example and print per-epoch loss/accuracy and the test accuracy.")
    t.add_argument("example", choices=["digits"], help="the example: scikit-learn's 8x8 handwritten digits")
    t.add_argument("--model", default="mlp", choices=["mlp", "cnn"], help="architecture (default: mlp)")
    t.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: 20 for mlp, 15 for cnn)")
    t.add_argument("--batch-size", type=positive_int, default=32, help="examples per step (default: 32)")
    t.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: per model)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialization and shuffling (default: 0)")
    t.add_argument("--device", default="cpu", choices=["cpu"], help="cpu only: the Triton backend does not train yet")
    t.set_defaults(func=_train)

    i = sub.add_parser("inspect", parents=[common], help="show what the compiler did to a model or a saved graph",
                       description="Fusions applied, kernels per archetype, peak memory and compile time per stage.")
    i.add_argument("target", help="checkpoint dir, model id, or a graph .json file")
    i.add_argument("--device", default="cpu", choices=list(DEVICES),
                   help="cost model to optimize for (no GPU needed)")
    from kiln.inspect import add_options
    add_options(i)
    i.set_defaults(func=_inspect)

    b = sub.add_parser("bench", parents=[common], help="latency and throughput of a checkpoint's main task",
                       description="Time the model's main task and print a table: LMs prefill ms and decode "
                                   "tokens/s, BERT sentences/s at batch 1 and 32, Whisper the real-time factor.")
    b.add_argument("model", help="checkpoint directory, GGUF file or model id in the local HF cache")
    b.add_argument("--prompt-len", type=positive_int, default=128, help="LMs: prompt tokens (default: 128)")
    b.add_argument("--new-tokens", type=positive_int, default=32, help="LMs: tokens to generate (default: 32)")
    b.add_argument("--batch-size", type=positive_int, default=1, help="LMs: prompts per batch (default: 1)")
    b.add_argument("--seconds", type=positive_float, default=10.0, help="Whisper: seconds of audio (default: 10)")
    b.add_argument("--repeat", type=positive_int, default=3, help="timed runs per figure, median (default: 3)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON")
    _device_dtype(b)
    b.set_defaults(func=_bench)
    return p


def _device_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=list(DEVICES),
                   help="cpu (NumPy) or cuda (Triton; needs an NVIDIA GPU and the gpu extra)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and activations dtype (default: float32)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"kiln {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = user_error(exc, f"kiln {args.command}")
        if message is None:
            raise
        return fail(args.command, message)


if __name__ == "__main__":
    sys.exit(main())
