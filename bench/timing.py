"""What every benchmark script here times with: medians, device time per call, cold kernel caches.

The scripts run as `python bench/NAME.py`, so this folder is on sys.path and `import timing` works.
"""

from __future__ import annotations

import os
import tempfile
import time


def log(*a):
    print(*a, flush=True)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def cold_caches() -> None:
    """Point Triton's and kiln's kernel caches at empty directories, so kiln's compile time is cold."""
    root = tempfile.mkdtemp(prefix="kiln-bench-")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(root, "triton")
    os.environ["KILN_CACHE_DIR"] = os.path.join(root, "kiln")


def cuda_ms(torch, fn, reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls: CUDA events on a GPU, wall clock on the CPU (a smoke run)."""
    out = []
    for _ in range(reps):
        if torch.cuda.is_available():
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            out.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return out
