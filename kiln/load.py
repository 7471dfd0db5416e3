"""`kiln.load`: a checkpoint directory or cached HF model id in, a runnable model out.

The family comes from config.json's model_type (see kiln.models.registry); the
returned object follows the family's model API (for LMs: kiln.runtime.CausalLM).
"""

from __future__ import annotations

import os

from kiln.io.hub import resolve_model_path
from kiln.models.registry import loader_for, model_type_of


def load(path_or_id: str | os.PathLike, device: str = "cpu", dtype: str = "float32", **options):
    """Load a model; `options` go to the family loader (e.g. optimize=False, progress=True for LMs)."""
    directory = resolve_model_path(path_or_id)
    model_type = model_type_of(directory)
    loader = loader_for(model_type, source=str(directory / "config.json"))
    return loader(directory, device=device, dtype=dtype, **options)
