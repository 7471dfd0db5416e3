"""Batching and shuffling over in-memory NumPy arrays.

The order of epoch e is a permutation drawn from (seed, e) alone, so any epoch, and any
batch within it, can be replayed: that is what makes a resumed run identical.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np


class ArrayLoader:
    """Batches of `batch_size` rows (axis 0) of every array, reshuffled each epoch.

    drop_last (default) keeps every batch the same shape, as a compiled graph needs.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        if not arrays:
            raise ValueError("ArrayLoader: give at least one array")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in self.arrays.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise ValueError(f"ArrayLoader: arrays must share their first dimension, got lengths {lengths}")
        self.n = next(iter(lengths.values()))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ArrayLoader: batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > self.n:
            raise ValueError(f"ArrayLoader: batch_size {batch_size} exceeds the {self.n} rows (with drop_last)")
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of epoch `epoch`, from batch number `start` on."""
        idx = self.order(epoch)
        for b in range(start, len(self)):
            rows = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield {k: v[rows] for k, v in self.arrays.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.epoch(0)
