"""model_type (from config.json) -> the loader of its family.

Loaders are named by import path and imported on first use, so `kiln.load` of a
BERT checkpoint never imports the Llama code and vice versa. A family module
registers more types with `register_family`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable

from kiln.io.errors import ConfigError

# model_type -> "module:function"; each function is loader(path, device=..., dtype=..., **options)
FAMILIES: dict[str, str | Callable] = {
    "llama": "kiln.models.llama:load_llama",
    "mistral": "kiln.models.llama:load_llama",
    "qwen2": "kiln.models.llama:load_llama",
    "qwen3": "kiln.models.llama:load_llama",
    "bert": "kiln.models.bert:load_bert",
    "whisper": "kiln.models.whisper:load_whisper",
}

# model_type -> "module:function" running `kiln run` for families that do not generate text from a
# prompt (speech models); each function takes the parsed argparse namespace and returns an exit code.
CLI_RUNNERS: dict[str, str | Callable] = {"whisper": "kiln.cli_transcribe:transcribe_main"}

# A checkpoint without config.json but with one of these files: the family that reads it.
ORIGINAL_LAYOUT_FILES = {"params.json": "llama"}


class UnsupportedModelError(ConfigError):
    """config.json names a model_type that no kiln family implements."""


def register_family(model_type: str, loader: str | Callable) -> None:
    """Map `model_type` to a loader (a callable or a "module:function" path)."""
    FAMILIES[model_type] = loader


def cli_runner_for(model_type: str) -> Callable | None:
    """The `kiln run` handler registered for `model_type`, or None (text generation)."""
    entry = CLI_RUNNERS.get(model_type)
    if entry is None or callable(entry):
        return entry
    return _resolve(entry)


def model_type_of(directory: str | Path) -> str:
    """The checkpoint's model_type, from config.json (or 'llama' for an original-layout params.json)."""
    d = Path(directory)
    cfg_path = d / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{cfg_path}: invalid JSON: {e}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
            raise ConfigError(f"{cfg_path}: no 'model_type' string; cannot tell which model family to load")
        return cfg["model_type"]
    for name, family in ORIGINAL_LAYOUT_FILES.items():
        if (d / name).is_file():
            return family
    raise ConfigError(f"{d}: no config.json, so the model family is unknown")


def loader_for(model_type: str, source: str = "config.json") -> Callable:
    """The loader function for `model_type`; UnsupportedModelError lists the supported types."""
    entry = FAMILIES.get(model_type)
    if entry is None:
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not supported; supported types: {sorted(FAMILIES)}")
    return entry if callable(entry) else _resolve(entry)


def _resolve(path: str) -> Callable:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)
