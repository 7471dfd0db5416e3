"""What every `kiln` subcommand shares: argument types, the device check, checkpoint resolution, and
turning kiln's own errors into one stderr line with exit status 2.

Imported by the subcommands only when they run; it must stay cheap to import (no NumPy, no torch).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")

# model_type -> the command that serves it, for families `kiln run` does not generate text with
COMMAND_FOR = {"bert": "kiln embed --model {path} SENTENCE ..."}


# ---- argument types (argparse reports their errors as one line) ----------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def probability(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def numbers(count: int, what: str):
    """An argparse type for `count` comma-separated numbers (a point "X,Y", a box "X0,Y0,X1,Y1")."""
    def parse(text: str) -> tuple[float, ...]:
        parts = text.split(",")
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what} as {count} comma-separated numbers, got {text!r}")
        return values
    return parse


# ---- checks before any work ----------------------------------------------------------------------

def check_choice(option: str, value: str, choices) -> None:
    """For options whose parser this CLI does not define (kiln inspect's --dtype)."""
    if value not in choices:
        raise ValueError(f"{option} {value!r} is not one of {', '.join(choices)}")


def check_device(device: str) -> None:
    """Fail fast, in one line, when this machine cannot run on `device`."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return
    from kiln.extras import require

    torch = require("torch", "--device cuda")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        require("triton", "--device cuda")  # Triton's CPU interpreter stands in for the GPU
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU on this "
                         f"machine; use --device cpu")
    require("triton", "--device cuda")


def resolve_checkpoint(model: str):
    """The kiln.models.registry.Checkpoint (path, format, model_type) of a checkpoint directory,
    GGUF file, packaged model name or cached model id, read before any family-specific parsing so
    that a wrong kind of checkpoint is named as such."""
    from kiln.models.registry import resolve_checkpoint as resolve

    return resolve(model)


def kind_of(ck) -> str:
    """What a checkpoint is, for messages: its model_type, else its format ('gguf', ...)."""
    return ck.model_type or ck.format


# ---- errors --------------------------------------------------------------------------------------

def user_error(exc: BaseException, command: str = "this command") -> str | None:
    """The one-line message for an error caused by the input (kiln's own errors, bad arguments,
    missing files, missing extras); None for anything else, which is a bug and keeps its traceback."""
    from kiln.errors import KilnError
    from kiln.extras import missing_extra_in

    missing = missing_extra_in(exc, command)
    if missing is not None:
        return str(missing)
    if isinstance(exc, (KilnError, ValueError, OSError, NotImplementedError)):
        text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        if isinstance(exc, OSError) and exc.filename and exc.strerror:  # "[Errno 2] ..." -> "path: reason"
            text = f"{exc.filename}: {exc.strerror}"
        return text or type(exc).__name__
    return None


def fail(command: str, message: str) -> int:
    """Print `kiln COMMAND: error: MESSAGE` on stderr; the exit status for bad input (2)."""
    print(f"kiln {command}: error: {message}", file=sys.stderr)
    return 2
