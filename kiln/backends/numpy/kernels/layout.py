"""Layout and gather kernels: pure data movement, dtype preserved."""

from __future__ import annotations

import numpy as np

from kiln.ir.dtypes import as_dtype

from ._registry import kernel


@kernel("reshape")
def _reshape(x, shape):
    return np.reshape(x, shape)


@kernel("transpose")
def _transpose(x, perm):
    return np.transpose(x, perm)


@kernel("broadcast_to")
def _broadcast_to(x, shape):
    return np.broadcast_to(x, shape)


@kernel("concat")
def _concat(xs, axis=0):
    return np.concatenate(xs, axis=axis)


@kernel("slice")
def _slice(x, axes, starts, ends, steps=None):
    idx = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps or [1] * len(axes)):
        idx[a] = slice(s, e, st)
    return x[tuple(idx)]


@kernel("split")
def _split(x, sizes, axis=0):
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@kernel("pad")
def _pad(x, pads, mode="constant", value=0.0):
    if mode == "constant":
        return np.pad(x, pads, mode="constant", constant_values=np.asarray(value, x.dtype))
    return np.pad(x, pads, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def _check_index(idx, size, op):
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise IndexError(f"{op}: index out of range [{-size}, {size}) (min {idx.min()}, max {idx.max()})")


@kernel("gather")
def _gather(x, indices, axis=0):
    _check_index(indices, x.shape[axis], "gather")
    return np.take(x, indices, axis=axis)


@kernel("take_along_axis")
def _take_along_axis(x, indices, axis=-1):
    _check_index(indices, x.shape[axis], "take_along_axis")
    shape = [max(a, b) if j != axis % x.ndim else b for j, (a, b) in enumerate(zip(x.shape, indices.shape))]
    xs = [max(a, b) if j != axis % x.ndim else a for j, (a, b) in enumerate(zip(x.shape, indices.shape))]
    return np.take_along_axis(np.broadcast_to(x, xs), np.broadcast_to(indices, shape), axis=axis)


@kernel("embedding")
def _embedding(ids, weight):
    _check_index(ids, weight.shape[0], "embedding")
    if ids.size and ids.min() < 0:
        raise IndexError(f"embedding: negative token id {ids.min()}")
    return weight[ids]


@kernel("one_hot")
def _one_hot(ids, num_classes, dtype="float32"):
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise IndexError(f"one_hot: ids must be in [0, {num_classes}), got min {ids.min()} max {ids.max()}")
    return (ids[..., None] == np.arange(num_classes)).astype(as_dtype(dtype).np_dtype)


@kernel("repeat_interleave")
def _repeat_interleave(x, repeats, axis=0):
    return np.repeat(x, repeats, axis=axis)



def cache_rows(cache_shape, new_shape, position, axis: int) -> tuple:
    """The index of the rows cache_write replaces; raises IndexError naming a position out of range."""
    axis %= len(cache_shape)
    pos, n = int(np.asarray(position).reshape(-1)[0]), new_shape[axis]
    if not 0 <= pos <= cache_shape[axis] - n:
        raise IndexError(f"cache_write: position {pos} with {n} new rows is out of range for "
                         f"{cache_shape[axis]} rows along axis {axis}")
    idx = [slice(None)] * len(cache_shape)
    idx[axis] = slice(pos, pos + n)
    return tuple(idx)


@kernel("cache_write")
def _cache_write(cache, new, position, axis=2):
    out = np.array(cache, copy=True)
    out[cache_rows(cache.shape, new.shape, position, axis)] = new
    return out
