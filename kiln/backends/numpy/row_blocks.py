"""Row-wise NumPy work over cache-sized blocks of rows, on one or several threads.

Why: a chain of NumPy passes (a GEMM's bias + gelu + residual epilogue is ~25) streams a
large array through memory once per pass; over blocks of rows that stay in the L2 cache
the chain touches memory about once. NumPy releases the GIL inside its loops, so the
blocks can also run on several threads, which makes that elementwise work scale with the
BLAS pool the way the GEMMs do.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

BLOCK_BYTES = 128 * 1024      # per block and array: several arrays of a chain fit in L2 together
MIN_PARALLEL_BYTES = 1 << 20  # smaller work is not worth a thread hand-off

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="kiln-rows")
    return _pool


def row_blocks(rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of about BLOCK_BYTES each."""
    per = max(1, BLOCK_BYTES // max(1, row_bytes))
    return [(r, min(r + per, rows)) for r in range(0, rows, per)]


def run_row_blocks(fn: Callable[[int, int], None], blocks: list[tuple[int, int]], threads: int,
                   total_bytes: int) -> None:
    """fn(start, stop) for every block; blocks are split into `threads` contiguous groups when the work
    is large enough, one group on the calling thread. fn must only touch its own rows."""
    if threads <= 1 or len(blocks) < 2 or total_bytes < MIN_PARALLEL_BYTES:
        for start, stop in blocks:
            fn(start, stop)
        return
    n = min(threads, len(blocks))
    groups = [blocks[i * len(blocks) // n:(i + 1) * len(blocks) // n] for i in range(n)]

    def run(group):
        for start, stop in group:
            fn(start, stop)

    futures = [_executor().submit(run, g) for g in groups[1:]]
    run(groups[0])
    for f in futures:
        f.result()
