"""Element types of kiln tensors and their NumPy equivalents.

One small closed set, so every backend and the JSON format agree on names.
bfloat16 comes from ml_dtypes, which gives NumPy a real bfloat16 type.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    np_dtype: np.dtype
    is_float: bool
    is_int: bool

    @property
    def itemsize(self) -> int:
        return self.np_dtype.itemsize

    def __repr__(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):   # unpickled as the module's own instance (compiled plans are pickled)
        return as_dtype, (self.name,)


float32 = DType("float32", np.dtype(np.float32), True, False)
float16 = DType("float16", np.dtype(np.float16), True, False)
bfloat16 = DType("bfloat16", np.dtype(ml_dtypes.bfloat16), True, False)
float64 = DType("float64", np.dtype(np.float64), True, False)
int64 = DType("int64", np.dtype(np.int64), False, True)
int32 = DType("int32", np.dtype(np.int32), False, True)
uint8 = DType("uint8", np.dtype(np.uint8), False, True)
bool_ = DType("bool", np.dtype(np.bool_), False, False)

ALL_DTYPES: tuple[DType, ...] = (float32, float16, bfloat16, float64, int64, int32, uint8, bool_)
FLOAT_DTYPES: tuple[DType, ...] = (float32, float16, bfloat16, float64)
_BY_NAME = {d.name: d for d in ALL_DTYPES}
_BY_NAME["bool_"] = bool_
_BY_NP = {d.np_dtype: d for d in ALL_DTYPES}


def as_dtype(value: "DType | str | np.dtype | type") -> DType:
    """Return the kiln DType for a DType, a name, or a NumPy dtype; raise for anything else."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        if value in _BY_NAME:
            return _BY_NAME[value]
        raise TypeError(f"unsupported dtype {value!r}; expected one of {sorted(_BY_NAME)}")
    try:
        npd = np.dtype(value)
    except TypeError:
        raise TypeError(f"unsupported dtype {value!r}; expected one of {sorted(_BY_NAME)}") from None
    if npd in _BY_NP:
        return _BY_NP[npd]
    raise TypeError(f"unsupported dtype {npd}; expected one of {sorted(_BY_NAME)}")


def accumulation_dtype(dt: DType) -> DType:
    """The dtype reductions and matmuls accumulate in: float32 for half types."""
    return float32 if dt in (float16, bfloat16) else dt
