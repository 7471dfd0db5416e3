"""Compile kiln's Triton kernels for a GPU target on a machine without a GPU (compile only, nothing runs).

Triton can compile for a target it cannot launch on: its front end, MLIR/LLVM passes and ptxas
(shipped in the wheel) need no driver. This module installs a Triton driver that only names the
target (sm_90, an H100/H200), and builds a TritonExecutor whose Plan is lowered exactly as for
cuda but whose buffers are CPU tensors, so `kiln.backends.triton.precompile` can compile every
kernel of a real graph here. What it measures is the kernel compile time of the GPU's first run
(minus loading the binaries onto the device), serial or concurrent, with empty or filled
TRITON_CACHE_DIR. For benchmarks only (bench/compile_time.py --device sm90).
"""

from __future__ import annotations


class CompileOnlyDriver:
    """A Triton driver for a CUDA target without a device: kernels compile, nothing can launch."""

    def __init__(self, arch: int = 90, warp_size: int = 32):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, warp_size)

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def __getattr__(self, name):
        raise RuntimeError(f"compile-only Triton driver: {name!r} needs a GPU (nothing launches here)")


def install(arch: int = 90) -> None:
    """Make Triton compile for sm_`arch` from now on, in this process."""
    from triton.runtime import driver
    driver.set_active(CompileOnlyDriver(arch))


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
