"""Compile kiln's Triton kernels for a GPU target on a machine without a GPU (compile only, nothing runs).

Triton can compile for a target it cannot launch on: its front end, MLIR/LLVM passes and ptxas
(shipped in the wheel) need no driver. This module installs a Triton driver that only names the
target (sm_90, an H100/H200; kiln/backends/triton/compile_only_driver.py), and builds a TritonExecutor whose Plan is lowered exactly as for
cuda but whose buffers are CPU tensors, so `kiln.backends.triton.precompile` can compile every
kernel of a real graph here. What it measures is the kernel compile time of the GPU's first run
(minus loading the binaries onto the device), serial or concurrent, with empty or filled
TRITON_CACHE_DIR. For benchmarks only (bench/compile_time.py --device sm90).
"""

from __future__ import annotations


def install(arch: int = 90) -> None:
    """Make Triton compile for sm_`arch` from now on, in this process."""
    from kiln.backends.triton.compile_only_driver import install as install_driver
    install_driver(arch)


def executor(plan):
    """A TritonExecutor over CPU buffers whose Plan is lowered as for cuda (132 SMs, an H100/H200)."""
    import kiln.backends.triton.executor as E

    real_lower, real_interpreting = E.lower, E.interpreting
    E.interpreting = lambda: True   # passes the constructor's "a CPU needs the interpreter" check only
    E.lower = lambda plan, num_sms, device_type: real_lower(plan, num_sms=132, device_type="cuda")
    try:
        return E.TritonExecutor(plan, device="cpu", cuda_graph=False)
    finally:
        E.lower, E.interpreting = real_lower, real_interpreting
