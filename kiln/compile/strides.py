"""Element strides of views, so the Plan knows which reshapes need no copy.

A reshape of a strided view (a slice of the fused Q/K/V output, say) is still a view when
each group of merged dimensions is contiguous within itself; this is the rule NumPy's
no-copy reshape and torch's `view` follow, so both backends alias where the Plan does.
"""

from __future__ import annotations


def contiguous_strides(shape) -> tuple[int, ...]:
    out, step = [], 1
    for d in reversed(tuple(shape)):
        out.append(step)
        step *= max(d, 1)
    return tuple(reversed(out))


def reshape_strides(shape, strides, new_shape) -> tuple[int, ...] | None:
    """Strides of `new_shape` viewing the same elements as (shape, strides), or None if it needs a copy.

    Walk the old dims from the last, in chunks that are contiguous among themselves; the new
    dims must tile each chunk exactly (size-1 dims fit anywhere)."""
    shape, strides, new_shape = tuple(shape), tuple(strides), tuple(new_shape)
    if not shape or 0 in shape:
        return contiguous_strides(new_shape)
    out = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    base = strides[-1]
    chunk = view = 1
    for d in range(len(shape) - 1, -1, -1):
        chunk *= shape[d]
        if d == 0 or (shape[d - 1] != 1 and strides[d - 1] != chunk * base):
            while view_d >= 0 and (view < chunk or new_shape[view_d] == 1):
                out[view_d] = view * base
                view *= new_shape[view_d]
                view_d -= 1
            if view != chunk:
                return None
            if d > 0:
                base, chunk, view = strides[d - 1], 1, 1
    return tuple(out) if view_d == -1 else None
