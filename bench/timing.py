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


def replay_profile(torch, ex, reps: int, what: str, top: int = 15) -> list:
    """Device time per kernel of one run of a Triton executor's graph: CUPTI (torch.profiler) over
    CUDA-graph replays, so the times are the kernels' own, not the host's launch gaps.
    Rows (kernel name, ms per run, launches per run), largest first; the top ones are logged."""
    from torch.profiler import ProfilerActivity, profile

    if ex._graph is None:
        log("    (no CUDA graph: nothing to profile)")
        return []
    ex._graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            ex._graph.replay()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            rows.append((e.key, us / reps / 1e3, e.count // reps))
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    log(f"    device time per {what} by kernel (CUPTI, CUDA-graph replay): {total:.3f} ms in "
        f"{sum(r[2] for r in rows)} kernels")
    for name, ms, n in rows[:top]:
        log(f"      {ms:8.3f} ms  x{n:4d}  {name[:100]}")
    return rows
