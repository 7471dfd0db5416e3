"""Collectives on host arrays: torch.distributed (gloo) through kiln.backends.collectives."""

from __future__ import annotations

import numpy as np

from ... import collectives as coll
from ._registry import kernel


@kernel("all_reduce")
def _all_reduce(x, world=1, reduce="sum"):
    if world == 1 and reduce == "sum":
        return np.array(x, copy=True)
    return coll.numpy_collective(coll.all_reduce, x, world=world, reduce=reduce)


@kernel("all_gather")
def _all_gather(x, world=1, axis=0):
    if world == 1:
        return np.array(x, copy=True)
    return coll.numpy_collective(coll.all_gather, x, world=world, axis=axis % x.ndim)


@kernel("reduce_scatter")
def _reduce_scatter(x, world=1, axis=0, reduce="sum"):
    if world == 1 and reduce == "sum":
        return np.array(x, copy=True)
    return coll.numpy_collective(coll.reduce_scatter, x, world=world, axis=axis % x.ndim, reduce=reduce)
