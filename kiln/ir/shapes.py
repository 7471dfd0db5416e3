"""Shape arithmetic shared by the op type rules: broadcasting and axis normalization."""

from __future__ import annotations

from typing import Sequence

from .errors import GraphError


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting; raises GraphError naming both shapes when they don't broadcast."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dim = 1
        for s in shapes:
            d = s[i - rank + len(s)] if i - rank + len(s) >= 0 else 1
            if d != 1:
                if dim != 1 and dim != d:
                    raise GraphError(f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast")
                dim = d
        out.append(dim)
    return tuple(out)


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise GraphError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def norm_axes(axes, rank: int) -> list[int]:
    """None means all axes; an int means one; duplicates are an error."""
    if axes is None:
        return list(range(rank))
    if isinstance(axes, int):
        axes = [axes]
    out = sorted(norm_axis(a, rank) for a in axes)
    if len(set(out)) != len(out):
        raise GraphError(f"repeated axis in {axes}")
    return out


def reduced_shape(shape, axes, keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)
