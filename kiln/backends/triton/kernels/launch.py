"""Every kernel launch goes through `launch`, so a compile-only pass can build the binaries
(Triton's `warmup`: specialize and compile, no launch) from several threads at once."""

from __future__ import annotations

import threading
from contextlib import contextmanager

_state = threading.local()


def launch(fn, grid, *args, early_launch: bool | None = None, **kwargs) -> None:
    """early_launch: for kernels with a `PDL` constexpr, launch before the previous kernel ends
    (programmatic dependent launch); the kernel waits (`gdc_wait`) where it must."""
    if early_launch is not None:
        kwargs["PDL"] = early_launch
        if early_launch:
            kwargs["launch_pdl"] = True
    if getattr(_state, "compile_only", False):
        kernel = fn.warmup(*args, grid=grid, **kwargs)
        if _state.compiled is not None:
            _state.compiled.append(kernel)
    else:
        fn[grid](*args, **kwargs)


@contextmanager
def compile_only(compiled: list | None = None):
    """Within this block (in this thread), launches compile their kernel and do not run it; with
    `compiled`, what each compile-only launch returns (Triton's compiled kernel, or its future
    under the async compile mode) is appended to it."""
    prev = getattr(_state, "compile_only", False), getattr(_state, "compiled", None)
    _state.compile_only, _state.compiled = True, compiled
    try:
        yield
    finally:
        _state.compile_only, _state.compiled = prev


def compiling_only() -> bool:
    return getattr(_state, "compile_only", False)
