"""Compile a Program's kernels in forked worker processes, in the background, into Triton's disk cache.

Why processes: Triton's front end (a kernel's AST to TTIR) is Python and holds the GIL, so compile
threads in one process overlap only in MLIR/LLVM and ptxas, and while they run the main thread,
planning the next graph, competes with them for the GIL. Why in the background: an executor binds
its launches well before its first run (CausalLM plans and binds prefill and decode, then runs), so
its kernels can compile while the next graph is optimized.

How: `start(launches, calls)` (TritonExecutor's constructor, on a GPU) forks up to
`compile_threads()` workers, one core fewer than the machine has (none on a machine of two: the
planner would lose its core). They take the distinct launches (`precompile.distinct`) off a
pipe one at a time and run each in compile-only mode (`kernels/launch.py`) under a driver that only
names the GPU's target, over CPU stand-ins of the launch's tensors (`compile_only_driver.py`,
`_on_host`: a forked child must not touch the CUDA context it inherited), which files each binary
in Triton's cache. Where Triton builds a C launcher per kernel
signature, and its own CUDA utilities module, with gcc (3.6 and older, ~0.3 s each), a worker
builds them too, into the same cache. The parent goes on at once; `Workers.wait()` at the first
run reaps the workers, and the eager pass then finds every binary and launcher on disk.

Nothing depends on a worker: a launch that fails in one is counted (the executor then runs the
in-process precompile pass, which compiles whatever is missing), and a worker still running after
TIMEOUT_S is killed. Off under TRITON_INTERPRET=1, without os.fork, with one compile thread, or
with KILN_COMPILE_WORKERS=0.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import struct
import time
from dataclasses import dataclass, field

import torch

from kiln import children

from .device import interpreting
from .kernels.launch import compile_only
from .precompile import compilable, compile_threads, distinct, wait_triton_key

TIMEOUT_S = 120.0
MAX_ERRORS = 4
MAX_JOBS = 16000   # the job list is written to the pipe before any worker reads it: it must fit its 64 KiB
_JOB = struct.Struct("<i")
_unreaped: list[int] = []   # workers of executors that never ran: reaped by the next start


def enabled() -> bool:
    raw = os.environ.get("KILN_COMPILE_WORKERS", "1").strip().lower()
    return raw not in ("0", "false", "no", "off") and hasattr(os, "fork") and not interpreting()


@dataclass
class WorkerStats:
    workers: int = 0
    distinct: int = 0          # distinct launches handed out
    failed: int = 0            # launches that raised in a worker (left to the in-process pass)
    errors: list = field(default_factory=list)   # the first few errors (theirs, or a launcher's build)
    killed: int = 0            # workers still running at the deadline
    left: int = 0              # launches no worker took
    fork_seconds: float = 0.0  # the parent's time in start()
    seconds: float = 0.0       # start() to the last worker reaped
    waited_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every distinct launch compiled into Triton's cache."""
        return self.workers > 0 and self.failed == 0 and self.killed == 0 and self.left == 0


class Workers:
    def __init__(self, pids: list[int], jobs_fd: int, results_fd: int, stats: WorkerStats, t0: float):
        self.pids, self.jobs_fd, self.results_fd, self.stats, self.t0 = pids, jobs_fd, results_fd, stats, t0
        self._done = False

    def __del__(self):   # never waited for (its executor never ran): the next start reaps them
        if not self._done:
            _unreaped.extend(self.pids)
            for fd in (self.jobs_fd, self.results_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def wait(self, timeout: float = TIMEOUT_S) -> WorkerStats:
        """Reap every worker (killing those past the deadline) and read what they reported."""
        if self._done:
            return self.stats
        t_wait = time.perf_counter()
        deadline = self.t0 + timeout
        running = set(self.pids)
        while running:
            for pid in list(running):
                if children.exit_status(pid) is not None:
                    running.discard(pid)
            if running and time.perf_counter() > deadline:
                for pid in running:
                    children.kill(pid)
                self.stats.killed = len(running)
                break
            if running:
                time.sleep(0.002)
        st = self.stats
        for line in _read_all(self.results_fd).decode(errors="replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            st.failed += r["failed"]
            st.errors = (st.errors + r["errors"])[:MAX_ERRORS]
        st.left = len(_read_all(self.jobs_fd)) // _JOB.size
        os.close(self.jobs_fd)
        os.close(self.results_fd)
        st.seconds = time.perf_counter() - self.t0
        st.waited_seconds = time.perf_counter() - t_wait
        self._done = True
        return st


def start(launches, calls, workers: int | None = None) -> Workers | None:
    """Fork the workers for the distinct kernels of `launches` with their resolved `calls`; None when
    off or when there is nothing to compile."""
    if not enabled():
        return None
    _reap_abandoned()
    todo = distinct(compilable(launches, calls))
    if workers is None:   # one core stays with the parent, which goes on planning
        workers = min(compile_threads(), (os.cpu_count() or 1) - 1)
    n = min(workers, len(todo))
    if n <= 1 or len(todo) > MAX_JOBS:
        return None
    t0 = time.perf_counter()
    wait_triton_key()              # else every worker would hash Triton's installation again
    target = _target()
    build_utils = _parent_has_no_driver()
    jobs_r, jobs_w = os.pipe()
    results_r, results_w = os.pipe()
    os.write(jobs_w, b"".join(_JOB.pack(i) for i in range(len(todo))))   # at most MAX_JOBS: fits the pipe
    os.close(jobs_w)               # the workers see the end of the jobs once the pipe is empty
    pids = [children.fork(lambda w=w: _work(todo, jobs_r, results_w, target, build_utils and w == 0))
            for w in range(n)]
    os.close(results_w)
    fcntl.fcntl(jobs_r, fcntl.F_SETFL, fcntl.fcntl(jobs_r, fcntl.F_GETFL) | os.O_NONBLOCK)
    fcntl.fcntl(results_r, fcntl.F_SETFL, fcntl.fcntl(results_r, fcntl.F_GETFL) | os.O_NONBLOCK)
    stats = WorkerStats(workers=n, distinct=len(todo), fork_seconds=time.perf_counter() - t0)
    return Workers(pids, jobs_r, results_r, stats, t0)


def _work(todo, jobs_fd: int, results_fd: int, target: tuple[int, int], build_utils: bool) -> None:
    """A worker's whole life: compile launches off the pipe until it is empty, report (one JSON line,
    written at once: atomic under PIPE_BUF), exit."""
    failed, errors = 0, []

    def failure(where: str, e: BaseException, count: bool = True) -> None:
        nonlocal failed
        failed += count
        if len(errors) < MAX_ERRORS:
            errors.append(f"{where}: {type(e).__name__}: {e}"[:400])

    try:
        gc.disable()
        from triton.runtime import driver

        from .compile_only_driver import CompileOnlyDriver
        try:
            from triton.runtime import _async_compile
            _async_compile.active_mode.set(None)
        except ImportError:
            pass
        launcher, utils = _c_built("CudaLauncher"), _c_built("CudaUtils") if build_utils else None
        if utils is not None:
            try:
                utils()
            except Exception:
                pass
        driver.set_active(CompileOnlyDriver(*target))
        while True:
            job = os.read(jobs_fd, _JOB.size)
            if len(job) < _JOB.size:
                break
            fn, args = todo[_JOB.unpack(job)[0]]
            compiled: list = []
            try:
                with compile_only(compiled):
                    fn(*_on_host(args))
            except Exception as e:
                failure(type(fn).__name__, e)
                continue
            for k in compiled if launcher is not None else ():
                try:
                    launcher(k.src, k.metadata)
                except Exception as e:   # the binary is on disk; the first launch builds its launcher
                    failure(f"{type(fn).__name__} launcher", e, count=False)
    except BaseException as e:
        failure("worker", e)
    finally:
        try:
            os.write(results_fd, (json.dumps({"failed": failed, "errors": errors}) + "\n").encode())
        finally:
            os._exit(0)


def _on_host(x):
    """A CPU stand-in for each GPU tensor in `x`, with its dtype, sizes, strides and 16-byte
    alignment (what Triton specializes a kernel on): a forked child cannot touch the CUDA tensors it
    inherited (even indexing one calls the CUDA runtime, which fails after a fork). Nothing is
    written to a stand-in's bytes, and untouched pages of an empty tensor cost no memory."""
    if isinstance(x, torch.Tensor) and x.device.type != "cpu":
        item = x.element_size()
        extent = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride())) if x.numel() else 1
        shift = (x.data_ptr() % 16) // item
        base = torch.empty(extent + shift + 16 // item, dtype=x.dtype)
        offset = ((-base.data_ptr()) % 16) // item + shift
        return base.as_strided(tuple(x.shape), tuple(x.stride()), offset)
    if isinstance(x, list):
        return [_on_host(y) for y in x]
    if isinstance(x, tuple):
        return tuple(_on_host(y) for y in x)
    return x


def _c_built(name: str):
    """Triton's NVIDIA class `name` when constructing it compiles C (Triton <= 3.6), else None."""
    try:
        from triton.backends.nvidia import driver as nv
    except ImportError:
        return None
    cls = getattr(nv, name, None)
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    return cls if code is not None and "compile_module_from_src" in code.co_names else None


def _target() -> tuple[int, int]:
    """(arch, warp size) of the GPU the parent compiles for, without creating Triton's driver."""
    from triton.runtime import driver
    active = getattr(driver, "_active", None)
    if active is not None:
        t = active.get_current_target()
        return int(t.arch), int(t.warp_size)
    import torch
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor, 32


def _parent_has_no_driver() -> bool:
    from triton.runtime import driver
    return getattr(driver, "_active", 1) is None and getattr(driver, "_default", 1) is None


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def _reap_abandoned() -> None:
    _unreaped[:] = [pid for pid in _unreaped if children.exit_status(pid) is None]
