"""Training checkpoints: one safetensors file with parameters, optimizer state and the step,
plus JSON metadata (trainer position, history) in the header.

Saving goes through :func:`kiln.io.safetensors_file.save_safetensors`: a temporary file in the
same directory, fsynced, atomically renamed over the target, then the directory fsynced. A
process killed at any point of a save leaves the previous checkpoint loadable (or the new one,
complete); ``tests/hardening/test_checkpoint_kill.py`` kills a training process mid-save to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from kiln.io.errors import CheckpointError
from kiln.io.safetensors_file import load_safetensors, read_safetensors_header, save_safetensors

FORMAT = "kiln-train-checkpoint"
PARAM, OPT = "param/", "opt/"


def save_checkpoint(path, params: Mapping[str, np.ndarray], opt_state: Mapping[str, np.ndarray], step: int,
                    meta: Mapping | None = None) -> None:
    tensors = {PARAM + k: np.ascontiguousarray(v) for k, v in params.items()}
    tensors.update({OPT + k: np.ascontiguousarray(v) for k, v in opt_state.items()})
    metadata = {"format": FORMAT, "step": str(int(step)), "meta": json.dumps(dict(meta or {}))}
    save_safetensors(path, tensors, metadata)


def load_checkpoint(path) -> dict:
    """{"params", "opt_state", "step", "meta"}, arrays copied out of the file."""
    path = Path(path)
    _, metadata, _ = read_safetensors_header(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kiln training checkpoint (metadata format={metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    try:
        step, meta = int(metadata["step"]), json.loads(metadata["meta"])
    except (KeyError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: training checkpoint metadata 'step'/'meta' missing or malformed: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: training checkpoint metadata 'meta' must be a JSON object, found {type(meta).__name__}")
    tensors = load_safetensors(path)
    params = {k[len(PARAM):]: np.array(v) for k, v in tensors.items() if k.startswith(PARAM)}
    opt = {k[len(OPT):]: np.array(v) for k, v in tensors.items() if k.startswith(OPT)}
    return {"params": params, "opt_state": opt, "step": step, "meta": meta}
