"""A Triton driver that names a CUDA target and nothing else: kernels compile for it, none launch.

Triton's front end, MLIR/LLVM passes and ptxas (shipped in the wheel) need no GPU driver, only the
target. Two users: a forked compile worker (`compile_workers.py`), which must not touch the CUDA
context it inherited from its parent, and the benchmarks that compile for an H100/H200 on a machine
without a GPU (bench/compile_only_target.py).
"""

from __future__ import annotations


class CompileOnlyDriver:
    """Names the target; every call that would need the device raises."""

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


def install(arch: int = 90, warp_size: int = 32) -> None:
    """Make Triton compile for sm_`arch` from now on, in this process."""
    from triton.runtime import driver
    driver.set_active(CompileOnlyDriver(arch, warp_size))
