"""Rotary embeddings over a (time, height, width) token grid, as V-JEPA's video ViT applies them.

A head's first `3 * part` dims are three parts (part = 2 * (head_dim // 3 // 2)), rotated by a
token's frame, row and column index; the dims after them pass through. Within a part of size d,
frequency j (< d/2) is 1 / theta^(j / (d/2)) and the cos/sin tables are the d/2 angles tiled
twice, applied to the pairs (2i, 2i + 1) as x * cos + (-x[2i+1], x[2i]) * sin. Tiling (not
repeating each angle for its pair) means the two dims of a pair turn by different angles: that
is how the published weights were trained, so it is kept, and why this is not the `rope` op.

Token ids number the grid frame-major, then row, then column; `grid` is the (rows, columns) of
a frame. The ids a graph attends over may be any subset (a predictor's context and target
tokens), so tables are looked up by id from the grid's coordinates.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Value

from .rope import cos_sin


class Rope3D:
    """`tables(g, ids, count)` once per graph, then `rope(g, x, tables)` per q/k (an Attention's `rope`)."""

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float = 10000.0, dtype="float32"):
        self.head_dim, self.grid, self.dtype = head_dim, tuple(grid), dtype
        self.part = 2 * ((head_dim // 3) // 2)
        self.rotated = 3 * self.part
        if self.part == 0:
            raise ValueError(f"Rope3D: head_dim {head_dim} is too small for three rotary parts")
        half = self.part // 2
        exponents = np.arange(half, dtype=np.float32) / np.float32(half)
        omega = (np.float32(1.0) / np.float32(theta) ** exponents).astype(np.float32)
        self.omega = np.concatenate([omega, omega])   # tiled: dims j and j + d/2 share a frequency

    def coordinates(self, count: int) -> np.ndarray:
        """float32 [count, 3]: (frame, row, column) of token ids 0..count-1."""
        rows, cols = self.grid
        ids = np.arange(count, dtype=np.int64)
        frame, rest = np.divmod(ids, rows * cols)
        return np.stack([frame, rest // cols, rest % cols], axis=-1).astype(np.float32)

    def tables(self, g: Graph, count: int, ids: Value | None = None) -> tuple[Value, Value]:
        """cos/sin [B, 1, S, 3 * part] for the tokens `ids` [B, S] (int64, each < count); without ids,
        tokens 0..count-1 in order (B = 1)."""
        coords = g.constant(self.coordinates(count), name="rope3d_grid")
        pos = g.reshape(coords, shape=[1, count, 3]) if ids is None else g.embedding(ids, coords)
        b, s, _ = pos.shape
        angles = g.reshape(pos, shape=[b, s, 3, 1]) * g.constant(self.omega, name="rope3d_omega")
        angles = g.reshape(angles, shape=[b, 1, s, self.rotated])
        return cos_sin(g, angles, self.dtype)

    def __call__(self, g: Graph, x: Value, tables: tuple[Value, Value]) -> Value:
        """Rotate x [B, H, S, head_dim] by its tokens' grid coordinates."""
        cos, sin = tables
        b, h, s, d = x.shape
        r = self.rotated
        head = x if r == d else g.slice(x, axes=[3], starts=[0], ends=[r])
        pairs = g.reshape(head, shape=[b, h, s, r // 2, 2])
        even, odd = g.split(pairs, sizes=[1, 1], axis=-1)
        swapped = g.reshape(g.concat(g.neg(odd), even, axis=-1), shape=[b, h, s, r])
        out = head * cos + swapped * sin
        if r == d:
            return out
        return g.concat(out, g.slice(x, axes=[3], starts=[r], ends=[d]), axis=-1)
