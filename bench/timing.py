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
    critical_path(prof, reps, what)
    return rows


def critical_path(prof, reps: int, what: str, period_of: str = "attn") -> None:
    """Each kernel's share of the run's wall time: the part of its span after every earlier kernel
    ended (with early launch a kernel's own span includes its wait on the one before, so device
    time per kernel overstates it). Logged per kernel name, and position by position over one
    repeating layer (the period between launches whose name holds `period_of`)."""
    from torch.autograd import DeviceType

    ev = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    if not ev or len(ev) % reps:
        log(f"    (critical path: {len(ev)} kernel events over {reps} runs do not divide; skipped)")
        return
    exposed, end = [], float("-inf")
    for e in ev:
        exposed.append(max(0.0, e.time_range.end - max(e.time_range.start, end)))
        end = max(end, e.time_range.end)
    n = len(ev) // reps
    names = [ev[i].name for i in range(n)]
    us = [sum(exposed[r * n + i] for r in range(reps)) / reps for i in range(n)]
    by_name: dict = {}
    for name, t in zip(names, us):
        by_name[name] = by_name.get(name, 0.0) + t
    log(f"    critical path of one {what}: {sum(us) / 1e3:.3f} ms (each kernel's time after all earlier ones ended)")
    for name, t in sorted(by_name.items(), key=lambda kv: -kv[1])[:8]:
        log(f"      {t / 1e3:8.3f} ms  {name[:100]}")
    marks = [i for i, name in enumerate(names) if period_of in name]
    if len(marks) >= 3 and len({b - a for a, b in zip(marks, marks[1:])}) == 1:
        p, layers = marks[1] - marks[0], len(marks)
        start = max(0, marks[0] - 1)   # a layer's kernels from the one before its attention
        cells = []
        for k in range(p):
            ix = [start + k + j * p for j in range(layers - 1) if 0 <= start + k + j * p < n]
            label = max({names[i] for i in ix}, key=[names[i] for i in ix].count)   # layer 0's first is the step's own
            cells.append(f"{label[:24]} {sum(us[i] for i in ix) / len(ix):.2f}")
        log(f"    one layer ({p} kernels, us each, mean over {layers - 1} layers): " + " | ".join(cells))
