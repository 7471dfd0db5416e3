"""Contiguous [in, out] copies of [out, in] weight matrices, made once per weight array.

Why: `x @ W.T` with W stored [out, in] runs BLAS's transposed product; for the GEMV-shaped
matmuls of decoding (one row of x) the contiguous [in, out] layout is about 1.5x faster, and
GEMMs gain a few percent. The copy is made when an executor binds its parameters and shared
by every executor that binds the same array (a model's prefill and decode graphs read the
same weights), so each weight is transposed and held once; an entry goes away with its
source array.
"""

from __future__ import annotations

import weakref

import numpy as np


class TransposedWeights:
    """A cache of `np.ascontiguousarray(w.T)` keyed by the identity of `w`, held while `w` lives."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    def get(self, w: np.ndarray) -> np.ndarray:
        key = id(w)
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is w:
            return hit[1]
        wt = transpose_tiled(w)

        def forget(ref, key=key):
            if self._entries.get(key, (None,))[0] is ref:
                del self._entries[key]

        self._entries[key] = (weakref.ref(w, forget), wt)
        return wt


TRANSPOSED = TransposedWeights()


TILE = 128


def transpose_tiled(w: np.ndarray) -> np.ndarray:
    """`np.ascontiguousarray(w.T)` for a 2-D w, tile by tile: each tile is read and written within the
    cache, where the plain strided copy misses it on every element (about 2x slower, more when w's
    pages are first read from a memory-mapped checkpoint)."""
    out = np.empty((w.shape[1], w.shape[0]), w.dtype)
    for i in range(0, w.shape[0], TILE):
        for j in range(0, w.shape[1], TILE):
            out[j:j + TILE, i:i + TILE] = w[i:i + TILE, j:j + TILE].T
    return out
