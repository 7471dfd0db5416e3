"""The op-name -> NumPy kernel table, filled by the category modules."""

from __future__ import annotations

from typing import Callable

import numpy as np

KERNELS: dict[str, Callable] = {}


def kernel(*names: str):
    def deco(fn):
        for n in names:
            if n in KERNELS:
                raise ValueError(f"NumPy kernel for {n!r} registered twice")
            KERNELS[n] = fn
        return fn
    return deco


HALF = (np.dtype(np.float16),)


def is_half(a: np.ndarray) -> bool:
    return a.dtype == np.float16 or a.dtype.name == "bfloat16"


def compute_dtype(a: np.ndarray) -> np.dtype:
    """float32 for half types (accumulate wide), the input dtype otherwise."""
    return np.dtype(np.float32) if is_half(a) else a.dtype


def up(a):
    """Upcast a half-precision array to float32; others unchanged."""
    return a.astype(np.float32) if a is not None and is_half(a) else a
