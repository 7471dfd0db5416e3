"""Kernel traces: every launch of every compiled-graph run, as a Chrome / Perfetto trace file.

Off by default and free when off: `CompiledGraph` hands the active `Trace` (or None) to its
executor before a run, and an executor without one runs its usual loop. Inside
`with tracing("trace.json"):` the executors time each launch and report it here:

- the NumPy executor: host time of each Plan kernel (its steps, start of the first to end of
  the last; `busy_us` sums the steps themselves),
- the Triton executor on a GPU: device time of each launch from a pair of CUDA events (the
  run goes eagerly instead of replaying its CUDA graph, so each launch can be timed), placed
  on the host clock at the run's first launch; read when the file is written, so tracing does
  not synchronize the device between runs.

The file is the Trace Event Format (JSON object with `traceEvents`) that ui.perfetto.dev and
chrome://tracing open: one process per compiled graph, a "runs" track with one event per run,
and kernel tracks with one complete ("X") event per launch (a kernel whose steps interleave
with another's goes on a second track, so events on a track never overlap).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Callable, Iterable, Iterator

# (name, start ns, end ns, args) on the time.perf_counter_ns clock
Span = tuple[str, int, int, dict]

_ACTIVE: "Trace | None" = None


def active() -> "Trace | None":
    """The trace being recorded, or None (the executors' check)."""
    return _ACTIVE


class Trace:
    """Launch spans of compiled-graph runs, grouped per graph."""

    def __init__(self):
        self.t0 = time.perf_counter_ns()
        self._runs: list[tuple[str, str, Callable[[], Iterable[Span]]]] = []  # (graph, clock, spans)

    def add_run(self, graph: str, spans: Iterable[Span] | Callable[[], Iterable[Span]], clock: str = "host") -> None:
        """One run of `graph`: its launch spans, or a callable that gives them when the trace is written
        (device timings are read then)."""
        self._runs.append((graph, clock, spans if callable(spans) else (lambda s=list(spans): s)))

    @property
    def runs(self) -> int:
        return len(self._runs)

    def events(self) -> list[dict]:
        """The Trace Event Format events: metadata, one "run" event per run, one "kernel" event per launch."""
        pids: dict[str, int] = {}
        lanes: dict[int, list[int]] = {}    # pid -> end (µs) of the last event on each kernel track
        out: list[dict] = []
        for graph, clock, spans in self._runs:
            spans = list(spans())
            if not spans:
                continue
            if graph not in pids:
                pid = pids[graph] = len(pids) + 1
                lanes[pid] = []
                out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": graph}})
                out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "runs"}})
            pid = pids[graph]
            first, last = min(s[1] for s in spans), max(s[2] for s in spans)
            out.append({"name": "run", "cat": "run", "ph": "X", "pid": pid, "tid": 0, "ts": self._us(first),
                        "dur": (last - first) / 1e3, "args": {"launches": len(spans), "clock": clock}})
            for name, start, end, args in sorted(spans, key=lambda s: s[1]):
                ts, dur = self._us(start), (end - start) / 1e3
                track = next((i for i, free in enumerate(lanes[pid]) if free <= ts), None)
                if track is None:
                    track = len(lanes[pid])
                    lanes[pid].append(0.0)
                    label = "kernels" if track == 0 else f"kernels (interleaved {track})"
                    out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": track + 1,
                                "args": {"name": label}})
                lanes[pid][track] = ts + dur
                out.append({"name": name, "cat": "kernel", "ph": "X", "pid": pid, "tid": track + 1, "ts": ts,
                            "dur": dur, "args": {**args, "clock": clock}})
        return out

    def write(self, path: str | os.PathLike) -> int:
        """Write the trace file; returns the number of kernel events."""
        events = self.events()
        with open(path, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms",
                       "otherData": {"producer": "kiln", "runs": self.runs}}, f)
        return sum(1 for e in events if e.get("cat") == "kernel")

    def _us(self, ns: int) -> float:
        return (ns - self.t0) / 1e3


@contextlib.contextmanager
def tracing(path: str | os.PathLike | None = None) -> Iterator[Trace]:
    """Record every compiled-graph run inside the block; write the file to `path` (if given) at the end."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("a kernel trace is already being recorded")
    trace = _ACTIVE = Trace()
    try:
        yield trace
    finally:
        _ACTIVE = None
        if path is not None:
            trace.write(path)
