"""Plan graphs in forked processes ahead of need, handing the plans over through the compile cache.

A model's warm-up plans several graphs one after another (a prefill and a decode per shape), each an
e-graph saturation of its own (~0.5 s apiece for SmolLM2-135M). `PlanAhead(graphs, ...)` forks one
process per graph, which plans it and stores the result in the persistent compile cache
(`cache.py`) while the parent plans the first graph itself; when the parent reaches a graph,
`wait(graph)` lets that child finish, and `compile_graph` then reads the stored plan (a cache hit).

Used only where it is safe and pays: the compile cache on, os.fork present, two cores or more, and
egglog not yet loaded in this process (its runtime keeps a thread, which a forked child would lack).
Nothing depends on a child: one that fails stores nothing and the parent plans the graph itself;
one still running `patience` after the parent planned its own first graph is killed.
"""

from __future__ import annotations

import os
import sys
import time

from kiln import children

from . import cache as plan_cache


def possible() -> bool:
    """KILN_PLAN_AHEAD=0 turns it off (A/B measurements)."""
    off = os.environ.get("KILN_PLAN_AHEAD", "1").strip().lower() in ("0", "false", "no", "off")
    return (not off and plan_cache.enabled() and hasattr(os, "fork") and (os.cpu_count() or 1) >= 2
            and "egglog" not in sys.modules)


class PlanAhead:
    """Children planning `graphs` (by id) into the compile cache; an empty set when not `possible()`."""

    def __init__(self, graphs, *, device: str, optimize: bool = True, evaluate=None, patience: float = 3.0):
        self.pids: dict[int, int] = {}   # id(graph) -> pid
        self.patience = patience
        if not possible() or not optimize:
            return
        n = max(1, (os.cpu_count() or 1) - 1)   # the parent keeps a core for its own graph
        todo = [g for g in graphs if not _stored(g, device, optimize, evaluate)][:n]
        for g in todo:
            self.pids[id(g)] = children.fork(lambda g=g: _plan_and_exit(g, device, optimize, evaluate))

    def __contains__(self, graph) -> bool:
        return id(graph) in self.pids

    def wait(self, graph, own_seconds: float) -> bool:
        """Let the child planning `graph` finish (True when it exited cleanly); the parent's own
        first graph took `own_seconds`, and a child gets `patience` times that (at least 10 s) more."""
        pid = self.pids.pop(id(graph), None)
        if pid is None:
            return False
        deadline = time.perf_counter() + max(10.0, self.patience * own_seconds)
        while True:
            code = children.exit_status(pid)
            if code is not None:
                return code == 0
            if time.perf_counter() > deadline:
                children.kill(pid)
                return False
            time.sleep(0.002)

    def close(self) -> None:
        """Kill and reap children never waited for."""
        for pid in self.pids.values():
            children.kill(pid)
        self.pids.clear()


def _stored(graph, device: str, optimize: bool, evaluate) -> bool:
    """Whether the compile cache has this graph's plan already (nothing to plan ahead)."""
    try:
        key = plan_cache.compile_key(graph, device=device, optimize=optimize, evaluate=evaluate, rules=None,
                                     exclude_rules=(), limits=None)
    except plan_cache.Uncacheable:
        return True
    return plan_cache.has(key)


def _plan_and_exit(graph, device: str, optimize: bool, evaluate) -> None:
    code = 1
    try:
        from .pipeline import compile_graph
        _, report = compile_graph(graph, device=device, optimize=optimize, evaluate=evaluate, cache=True)
        code = 0 if report.cache == "miss" and not report.optimizer_fell_back else 1   # 0: stored
    except BaseException:
        pass
    finally:
        os._exit(code)
