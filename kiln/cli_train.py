"""`kiln train digits [--model mlp|cnn] [--epochs N]`: train the built-in example, printing
per-epoch loss and accuracy and the final test accuracy."""

from __future__ import annotations

import sys
import time


def train_main(args) -> int:
    """args: an argparse Namespace with example ("digits"), model ("mlp" | "cnn"), epochs (int or
    None for the model's default) and optionally device, batch_size, lr, seed."""
    from kiln.train.digits import DEFAULT_EPOCHS, MODELS, train_digits

    if getattr(args, "example", "digits") != "digits":
        print(f"kiln train: unknown example {args.example!r}; expected 'digits'", file=sys.stderr)
        return 2
    if getattr(args, "device", "cpu") != "cpu":
        print("kiln train: only --device cpu is available until the Triton backend trains", file=sys.stderr)
        return 2
    model = getattr(args, "model", "mlp")
    if model not in MODELS:
        print(f"kiln train: unknown model {model!r}; expected one of {MODELS}", file=sys.stderr)
        return 2
    epochs = args.epochs if getattr(args, "epochs", None) is not None else DEFAULT_EPOCHS[model]
    if epochs < 1:
        print(f"kiln train: --epochs must be >= 1, got {epochs}", file=sys.stderr)
        return 2
    print(f"training a {model.upper()} on scikit-learn digits for {epochs} epochs (Adam, cosine schedule)")
    start = time.perf_counter()
    result = train_digits(model, epochs, batch_size=getattr(args, "batch_size", None) or 32,
                          lr=getattr(args, "lr", None), seed=getattr(args, "seed", None) or 0,
                          progress=sys.stderr.isatty(), log=lambda line: print(line, flush=True))
    print(f"test accuracy: {result['test_accuracy']:.4f}  ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    from kiln.cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
