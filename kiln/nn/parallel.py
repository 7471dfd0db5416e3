"""Tensor parallelism: one rank's slice of every parameter of a model built with local sizes.

A family builds its model twice: with the checkpoint's sizes (what the key table loads) and
with this rank's sizes (attention heads, KV heads and MLP width divided by the number of
ranks; the output projections row-parallel, `Linear(reduce_world=N)`). Comparing the two
parameter specs says how each tensor splits, with no table of names:

* same shape: replicated (norms, embeddings, the head, a row-parallel layer's bias);
* fewer rows: column-parallel; a load-time fusion (`parts`: Q/K/V, gate/up) is split block by
  block, so this rank gets its own query heads, KV heads and MLP columns of each part;
* fewer columns: row-parallel; this rank's contiguous slice of the input features.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .module import ParamSpec


def shard_params(full: Mapping[str, np.ndarray], full_specs: Mapping[str, ParamSpec],
                 local_specs: Mapping[str, ParamSpec], rank: int, world: int) -> dict[str, np.ndarray]:
    """This rank's parameters (contiguous copies) for the local model's specs."""
    out = {}
    for name, local in local_specs.items():
        a, whole = full[name], full_specs[name]
        if tuple(local.shape) == tuple(whole.shape):
            out[name] = a
        elif local.shape[1:] == whole.shape[1:]:
            parts = whole.parts or (whole.shape[0],)
            local_parts = local.parts or (local.shape[0],)
            blocks, start = [], 0
            for p, lp in zip(parts, local_parts):
                if lp * world != p:
                    raise ValueError(f"{name}: block of {p} rows does not split into {world} slices of {lp}")
                blocks.append(a[start + rank * lp:start + (rank + 1) * lp])
                start += p
            out[name] = np.ascontiguousarray(np.concatenate(blocks, axis=0))
        elif a.ndim == 2 and local.shape[0] == whole.shape[0] and local.shape[1] * world == whole.shape[1]:
            n = local.shape[1]
            out[name] = np.ascontiguousarray(a[:, rank * n:(rank + 1) * n])
        else:
            raise ValueError(f"{name}: cannot split {whole.shape} into {world} slices of {local.shape}")
    return out
