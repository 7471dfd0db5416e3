"""Compile a Program's kernels up front and concurrently, instead of one by one at their first launch.

A Triton kernel specialization is compiled the first time it is launched: the Python front end
(AST -> TTIR), MLIR passes, LLVM and ptxas, a few hundred ms each, one after another. Here every
launch first runs once in compile-only mode (`kernels/launch.py`: `JITFunction.warmup` specializes
and compiles without launching; cuBLAS and torch launches do nothing), with the compiles spread
over a thread pool:

- with Triton's async compile mode (`triton.runtime._async_compile`, Triton >= 3.5) the calling
  thread specializes each kernel and submits its compile to the pool; the pool's futures are
  deduplicated by Triton's own cache key, and each binary is filed in its kernel's cache when the
  block ends;
- without it, the launches are split over the pool's threads, each compiling in compile-only mode
  (launches that look alike, `_launch_key`, are compiled once).

The threads overlap: Triton's MLIR/LLVM passes leave the GIL and ptxas is a subprocess (8 GEMM
specializations for sm_90 compiled 1.9x faster on 2 threads than serially, on a 2-core machine).
Under TRITON_INTERPRET=1 nothing is compiled (the interpreter runs Python), so `precompile` then
only checks that the compile-only pass runs, unless `interpreted=False` is asked: the pass is
exercised, with nothing to gain. A failure is never fatal: the first eager run compiles whatever is
missing. `KILN_COMPILE_THREADS` sets the pool size (0 or 1: no precompile pass).

With `load` (the executor on a GPU), the compiled kernels are then readied for their first launch
over the same pool (`CompiledKernel._init_handles`): the binary loaded onto the device and, on
Triton 3.6 and older, a C launcher built for each distinct kernel signature -- a gcc subprocess of
~0.3 s each that the first run otherwise paid one after another (16 of them, ~5 s, in a cold
SmolLM2-135M prefill + decode compile on an H200).

Triton also hashes its own installation once per process before its first compile or cache
lookup (`triton_key`: libtriton.so read and hashed, ~0.3 s); `start_triton_key` reads it from disk
when the installation is unchanged (`triton_key.py`), else computes it in a background thread
(hashlib and file reads leave the GIL) while the graph is planned and lowered.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .device import interpreting
from .kernels.launch import compile_only

# launches that run torch ops or host NumPy kernels: nothing to compile, and compile-only
# mode does not reach them
SKIPPED_ARCHETYPES = ("fallback",)


def compile_threads() -> int:
    """KILN_COMPILE_THREADS, by default one per core up to 16 (compiles are CPU-bound)."""
    raw = os.environ.get("KILN_COMPILE_THREADS")
    if raw is not None and raw.strip():
        try:
            return max(0, int(raw))
        except ValueError:
            raise ValueError(f"KILN_COMPILE_THREADS must be an integer, got {raw!r}") from None
    return max(1, min(16, os.cpu_count() or 1))


@dataclass
class PrecompileStats:
    launches: int = 0        # launches run in compile-only mode
    threads: int = 0
    mode: str = "off"        # off | async (Triton's async compile) | threads | serial
    seconds: float = 0.0
    error: str | None = None
    loaded: int = 0          # distinct compiled kernels readied for launch (`load`)
    load_seconds: float = 0.0


_key_thread: threading.Thread | None = None


def _triton_key_fn():
    for where in ("triton.runtime.cache", "triton.compiler.compiler"):
        try:
            mod = __import__(where, fromlist=["triton_key"])
        except ImportError:
            continue
        fn = getattr(mod, "triton_key", None)
        if fn is not None:
            return fn
    return None


def start_triton_key() -> None:
    """Compute Triton's installation hash in the background, once per process (see the module doc)."""
    global _key_thread
    if _key_thread is not None or interpreting():
        return
    from .triton_key import install
    install()   # read from disk when Triton's installation is unchanged (kiln/backends/triton/triton_key.py)
    fn = _triton_key_fn()
    if fn is None:
        return

    def run():
        try:
            fn()
        except Exception:   # the main thread computes it again, and reports any error itself
            pass
    _key_thread = threading.Thread(target=run, name="kiln-triton-key", daemon=True)
    _key_thread.start()


def wait_triton_key() -> None:
    if _key_thread is not None:
        _key_thread.join()


def _has_async_mode() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("triton.runtime._async_compile") is not None
    except ImportError:
        return False


def precompile(launches, calls, threads: int | None = None, *, mode: str | None = None,
               load: bool = False) -> PrecompileStats:
    """Compile the kernels of `launches` (Program.launches) with their resolved `calls` ((fn, args)
    pairs, the executor's) in `threads` threads; `mode` forces "async", "threads" or "serial";
    `load` readies the compiled kernels for launch on the current GPU too."""
    threads = compile_threads() if threads is None else threads
    stats = PrecompileStats(threads=threads)
    todo = compilable(launches, calls)
    if not todo or (threads <= 1 and mode is None):
        return stats
    stats.mode = mode or ("async" if _has_async_mode() else "threads")
    stats.launches = len(todo)
    wait_triton_key()   # its lru_cache is not a lock: compiles started now would each compute it
    t0 = time.perf_counter()
    compiled: list = []
    try:
        if stats.mode == "async":
            _precompile_async(todo, threads, compiled)
        elif stats.mode == "threads":
            _precompile_threads(todo, threads, compiled)
        else:
            with compile_only(compiled):
                for fn, args in todo:
                    fn(*args)
    except Exception as e:   # never fatal: the eager pass compiles whatever is missing
        stats.error = f"{type(e).__name__}: {e}"
    stats.seconds = time.perf_counter() - t0
    if load and stats.error is None:
        t0 = time.perf_counter()
        stats.loaded = _ready_for_launch(compiled, threads)
        stats.load_seconds = time.perf_counter() - t0
    return stats


def _ready_for_launch(compiled, threads: int) -> int:
    """Load each distinct compiled kernel onto the device (and build its launcher) over `threads`
    threads; a failure is left to the first launch, which raises it as it always would."""
    kernels = {}
    for k in compiled:
        if hasattr(k, "result"):     # a FutureKernel of the async mode: resolved when its block ended
            k = k.result(ignore_errors=True)
        if k is not None and getattr(k, "module", 1) is None and hasattr(k, "_init_handles"):
            kernels[id(k)] = k

    device = torch.cuda.current_device() if torch.cuda.is_available() else None

    def ready(k):
        try:
            if device is not None:
                torch.cuda.set_device(device)   # the device the eager pass launches on
            k._init_handles()
        except Exception:
            pass

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kiln-load") as pool:
        list(pool.map(ready, kernels.values()))
    return len(kernels)


def _precompile_async(todo, threads: int, compiled: list) -> None:
    from triton.runtime import _async_compile

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kiln-compile") as pool:
        try:
            mode = _async_compile.AsyncCompileMode(pool, ignore_errors=True)  # a failed compile: left to the eager pass
        except TypeError:   # a Triton whose AsyncCompileMode has no ignore_errors
            mode = _async_compile.AsyncCompileMode(pool)
        try:
            with mode, compile_only(compiled):
                for fn, args in todo:
                    fn(*args)
        finally:   # an exception inside leaves Triton's mode set, and every later precompile refused
            _async_compile.active_mode.set(None)


def compilable(launches, calls) -> list:
    """The (fn, args) of the launches that compile a Triton kernel (not torch or host fallbacks)."""
    return [(fn, args) for launch, (fn, args) in zip(launches, calls) if launch.archetype not in SKIPPED_ARCHETYPES]


def distinct(todo) -> list:
    """One (fn, args) per kernel of `todo` that compiles differently (`_launch_key`), in order."""
    seen, out = set(), []
    for fn, args in todo:
        key = _launch_key(fn, args)
        if key not in seen:
            seen.add(key)
            out.append((fn, args))
    return out


def _precompile_threads(todo, threads: int, compiled: list) -> None:
    distinct_launches = distinct(todo)

    def one(item):
        fn, args = item
        with compile_only(compiled):   # thread-local: each worker sets it for itself
            fn(*args)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kiln-compile") as pool:
        for f in [pool.submit(one, item) for item in distinct_launches]:
            f.result()


def _launch_key(fn, args) -> tuple:
    """What makes two launches the same compiled kernel, approximately: the launcher's settings,
    and what Triton specializes its arguments on -- a tensor's dtype and 16-byte alignment, an
    integer being 1 or a multiple of 16 (a launcher passes a tensor's sizes and strides as
    integers). A false match only leaves a kernel to the eager pass."""
    attrs = tuple(sorted((k, _setting(v)) for k, v in vars(fn).items()
                         if isinstance(v, (int, float, str, bool, tuple, dict, type(None)))))
    return (type(fn).__name__, attrs, tuple(_specialized(args, [])))


def _setting(v):
    """A launcher attribute as a hashable key: an array by shape and dtype (its values reach the
    kernel as a tensor argument, not as code), containers by their items."""
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str)
    if isinstance(v, (tuple, list)):
        return tuple(_setting(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted(((repr(k), _setting(x)) for k, x in v.items()), key=lambda kv: kv[0]))
    return type(v).__name__


def _integer(v: int) -> int:
    return 1 if v == 1 else 16 if v % 16 == 0 else 0


def _specialized(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append((x.dtype, x.data_ptr() % 16 == 0, tuple(map(_integer, x.shape)), tuple(map(_integer, x.stride()))))
    elif isinstance(x, (list, tuple)):
        for y in x:
            _specialized(y, out)
    elif isinstance(x, int) and not isinstance(x, bool):
        out.append(_integer(x))
    else:
        out.append("-")
    return out
