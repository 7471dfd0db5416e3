"""Training checkpoints: one safetensors file with parameters, optimizer state and the step,
plus JSON metadata (trainer position, history) in the header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

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
        raise ValueError(f"{path}: not a kiln training checkpoint (metadata format={metadata.get('format')!r}, "
                         f"expected {FORMAT!r})")
    tensors = load_safetensors(path)
    params = {k[len(PARAM):]: np.array(v) for k, v in tensors.items() if k.startswith(PARAM)}
    opt = {k[len(OPT):]: np.array(v) for k, v in tensors.items() if k.startswith(OPT)}
    return {"params": params, "opt_state": opt, "step": int(metadata["step"]), "meta": json.loads(metadata["meta"])}
