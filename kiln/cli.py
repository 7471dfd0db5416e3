"""The `kiln` command line: run, embed, train, inspect.

Each subcommand imports its implementation lazily so `kiln --help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _run(args):
    from kiln.cli_run import run_main
    return run_main(args)


def _embed(args):
    from kiln.cli_embed import embed_main
    return embed_main(args)


def _train(args):
    from kiln.cli_train import train_main
    return train_main(args)


def _inspect(args):
    from kiln.inspect import inspect_main
    return inspect_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="kiln: an ML compiler and runtime.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("run", help="run a checkpoint: generate text (LMs) or transcribe audio (Whisper)")
    r.add_argument("model", help="checkpoint directory or model id in the local HF cache")
    r.add_argument("inputs", nargs="*", help="audio file(s) for speech models")
    r.add_argument("--prompt", default=None, help="prompt text for language models")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--dtype", default="float32")
    r.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    r.add_argument("--do-sample", action="store_true")
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--top-k", type=int, default=None)
    r.add_argument("--top-p", type=float, default=None)
    r.add_argument("--language", default=None, help="speech models: spoken language (default: detect)")
    r.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    r.set_defaults(func=_run)

    e = sub.add_parser("embed", help="sentence embeddings and similarity ranking (BERT family)")
    e.add_argument("sentences", nargs="*", help="sentences; with --similarity the first is the query")
    e.add_argument("--model", default=None, help="checkpoint dir (default: the all-MiniLM-L6-v2 demo package)")
    e.add_argument("--similarity", action="store_true", help="rank the other sentences by cosine similarity to the first")
    e.add_argument("--file", default=None, help="read sentences from a file, one per line")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.set_defaults(func=_embed)

    t = sub.add_parser("train", help="train a built-in example (digits)")
    t.add_argument("example", choices=["digits"])
    t.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.set_defaults(func=_train)

    i = sub.add_parser("inspect", help="show what the compiler did to a model or a saved graph")
    i.add_argument("target", help="checkpoint dir, model id, or a graph .json file")
    i.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    from kiln.inspect import add_options
    add_options(i)
    i.set_defaults(func=_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
