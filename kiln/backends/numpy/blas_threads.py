"""How many BLAS threads a plan's matmuls get: the pool's size, or one when threads do not pay.

Why: OpenBLAS (and MKL) split even small GEMMs and GEMVs across their thread pool and
synchronize the threads for every call. On an idle machine that makes a decode step
~1.7x faster on two cores; on a machine whose cores are busy with other processes each
of those synchronizations waits for a descheduled thread, and the same step gets up to
10x slower than on one thread. Neither choice is right everywhere, so each executor
measures (`ThreadChoice`): it times runs with the pool (the size the process gave BLAS:
the default, an env var or an enclosing `threadpoolctl.threadpool_limits`) and with one
thread, keeps the faster, and re-checks the other with exponential back-off.

The switch goes through threadpoolctl, and the pool is restored after every run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

_controller = None


def _blas():
    """threadpoolctl's controller for the loaded BLAS libraries (made once: it scans loaded libraries)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def pool_size() -> int:
    """The number of threads BLAS would use now (1 if no controllable BLAS is loaded)."""
    sizes = [lib.num_threads for lib in _blas().lib_controllers]
    return max([s for s in sizes if s] or [1])


@contextmanager
def blas_threads(n: int):
    """Run the block with BLAS limited to n threads (nothing changes when the pool is not larger)."""
    if pool_size() <= n:
        yield
        return
    with _blas().limit(limits=n):
        yield


class ThreadChoice:
    """Picks, for one executor, between the BLAS pool and a single thread by timing whole runs.

    The first run warms up (page faults, caches) and is not counted; after `POOL_RUNS` timed
    runs with the pool, one thread gets a run, and every later run uses the choice with the
    lower moving average of its run times (a plan run only a few times never leaves the
    pool). The other choice is re-tried after `backoff` runs: a fresh timing replaces its
    stale average, and the back-off doubles each time it loses (up to `MAX_BACKOFF` runs) and
    resets when it wins. Without a multi-threaded BLAS pool nothing is timed.
    """

    POOL_RUNS = 3
    FIRST_BACKOFF = 8
    MAX_BACKOFF = 256

    def __init__(self):
        self.average: dict[int, float | None] = {0: None, 1: None}   # 0: the pool, 1: one thread
        self.best = 0
        self.countdown = 0
        self.backoff = self.FIRST_BACKOFF
        self.warm = False
        self.pool_runs = 0

    def next(self) -> int:
        """The choice for the coming run: 0 (the pool) or 1 (one thread)."""
        if not self.warm or self.pool_runs < self.POOL_RUNS:
            return 0
        if self.average[1] is None:
            return 1
        return 1 - self.best if self.countdown <= 0 else self.best

    def record(self, choice: int, seconds: float) -> None:
        if not self.warm:
            self.warm = True
            return
        self.pool_runs += choice == 0
        avg = self.average
        trial = choice != self.best
        avg[choice] = seconds if trial or avg[choice] is None else 0.5 * (avg[choice] + seconds)
        if avg[1 - choice] is None:
            return
        best = 0 if avg[0] <= avg[1] else 1
        if trial:          # a fresh timing replaced the stale one; back off further each time it loses
            if best == choice:
                self.backoff = self.FIRST_BACKOFF
            self.countdown = self.backoff
            if best != choice:
                self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
        elif best != self.best:   # the current choice got slower than the other's last timing
            self.countdown = self.backoff
        else:
            self.countdown -= 1
        self.best = best

    @contextmanager
    def run(self):
        """Time one run under the chosen thread count."""
        if pool_size() <= 1:
            yield
            return
        choice = self.next()
        t = time.perf_counter()
        with blas_threads(1) if choice == 1 else nullcontext():
            yield
        self.record(choice, time.perf_counter() - t)
