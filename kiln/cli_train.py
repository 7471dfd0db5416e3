"""`kiln train digits [--model mlp|cnn] [--epochs N]`: train the built-in example, printing
per-epoch loss and accuracy and the final test accuracy. Needs scikit-learn (the train extra),
which ships the digits data set."""

from __future__ import annotations

import sys
import time

from kiln.cli_common import fail


def train_main(args) -> int:
    """args: an argparse Namespace with example ("digits"), model ("mlp" | "cnn"), epochs (int or
    None for the model's default) and optionally device, batch_size, lr, seed."""
    from kiln.extras import require

    if getattr(args, "example", "digits") != "digits":
        return fail("train", f"unknown example {args.example!r}; expected 'digits'")
    if getattr(args, "device", "cpu") != "cpu":
        return fail("train", f"--device {args.device!r}: only cpu trains until the Triton backend does")
    require("sklearn", "kiln train digits")
    from kiln.train.digits import DEFAULT_EPOCHS, MODELS, train_digits

    model = getattr(args, "model", "mlp")
    if model not in MODELS:
        return fail("train", f"unknown model {model!r}; expected one of {MODELS}")
    epochs = args.epochs if getattr(args, "epochs", None) is not None else DEFAULT_EPOCHS[model]
    if epochs < 1:
        return fail("train", f"--epochs must be >= 1, got {epochs}")
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
