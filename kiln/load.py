"""`kiln.load`: a checkpoint in, a runnable model out.

A checkpoint is a HF directory or cached HF model id (the family comes from
config.json's model_type), a GGUF file or a directory holding one, a CTranslate2
directory (model.bin), or a packaged model's short name such as
"smollm2-135m-instruct" (see kiln.models.registry). The returned object follows
the family's model API (for LMs: kiln.runtime.CausalLM).
"""

from __future__ import annotations

import os

from kiln.models.registry import load_checkpoint


def load(path_or_id: str | os.PathLike, device: str = "cpu", dtype: str = "float32", **options):
    """Load a model; `options` go to the family loader (e.g. optimize=False, progress=True for LMs)."""
    return load_checkpoint(path_or_id, device=device, dtype=dtype, **options)
