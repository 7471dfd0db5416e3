"""The torch side of the Triton backend: dtypes, host <-> device copies, which device runs.

torch is the backend's memory manager (allocation, copies, CUDA graphs, cuBLAS); Triton
generates the kernels. Under `TRITON_INTERPRET=1` Triton runs kernels on CPU tensors, so the
same code paths are exercised without a GPU (that is how the tests run).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from kiln.ir import DType, as_dtype

_TORCH = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
    "bool": torch.bool,
}
_KILN = {v: k for k, v in _TORCH.items()}


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def programmatic_launch() -> bool:
    """Whether kernels may launch before the previous one finishes (programmatic dependent launch,
    sm_90+): a kernel then loads what no earlier kernel of the run writes (a decode GEMV's weights)
    while its predecessor drains, and waits (`gdc_wait`) before it reads anything else.
    KILN_PDL=0 turns it off (A/B measurements)."""
    from .kernels.tmath import HAS_GDC
    if interpreting() or not HAS_GDC or os.environ.get("KILN_PDL", "1") == "0" or not torch.cuda.is_available():
        return False
    return device_properties(torch.cuda.current_device()).major >= 9


@functools.lru_cache(maxsize=None)
def device_properties(index: int):
    """torch.cuda.get_device_properties, asked once per device: lowering asks it for every decode
    kernel (`programmatic_launch`), a few hundred times a compile."""
    return torch.cuda.get_device_properties(index)


def _patch_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into an int with int(array of shape (1,)), which
    NumPy >= 2.4 refuses; loops such as `range(0, n, BLOCK)` over a runtime n then fail. Make
    that conversion take the single element instead (interpreter only; compiled kernels are
    unaffected)."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "_kiln_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._kiln_patched = True
    interpreter._patch_lang_tensor = patched


if interpreting():
    _patch_interpreter_index()


def default_device() -> torch.device:
    """cuda when a GPU is present, cpu under the Triton interpreter; otherwise an error."""
    if torch.cuda.is_available() and not interpreting():
        return torch.device("cuda")
    if interpreting():
        return torch.device("cpu")
    raise RuntimeError("device='cuda' needs a CUDA GPU (torch.cuda.is_available() is False); "
                       "set TRITON_INTERPRET=1 to run the Triton kernels on the CPU for testing")


def torch_dtype(dt: DType | str) -> torch.dtype:
    return _TORCH[as_dtype(dt).name]


def kiln_dtype(dt: torch.dtype) -> DType:
    try:
        return as_dtype(_KILN[dt])
    except KeyError:
        raise TypeError(f"torch dtype {dt} has no kiln equivalent; expected one of {sorted(_TORCH)}") from None


def _c_order(arr) -> np.ndarray:
    a = np.asarray(arr)
    return a if a.flags.c_contiguous else a.copy(order="C")   # (np.ascontiguousarray makes 0-d 1-d)


def to_torch(arr: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch copy of a NumPy array on `device`; bfloat16 travels as its raw 16-bit pattern."""
    a = _c_order(arr)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a.copy() if not a.flags.writeable else a)
    return t.to(device, non_blocking=False)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of a torch tensor (bfloat16 becomes ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        raw = t.contiguous().view(torch.uint16 if hasattr(torch, "uint16") else torch.int16).cpu().numpy()
        return raw.view(as_dtype("bfloat16").np_dtype).copy()
    return t.cpu().numpy().copy()


def copy_into(dst: torch.Tensor, arr: np.ndarray) -> None:
    """Copy a host array into an existing device buffer of the same shape and dtype."""
    a = _c_order(arr)
    if tuple(a.shape) != tuple(dst.shape):
        raise ValueError(f"copy_into: array of shape {a.shape} into a buffer of shape {tuple(dst.shape)}")
    if a.dtype.name == "bfloat16":
        src = torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    else:
        src = torch.from_numpy(a) if a.flags.writeable else torch.from_numpy(a.copy())
    if src.dtype != dst.dtype:
        raise TypeError(f"copy_into: array of dtype {a.dtype} into a {dst.dtype} buffer")
    dst.copy_(src, non_blocking=False)
