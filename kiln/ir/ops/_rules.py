"""Small type-rule helpers the op modules share."""

from __future__ import annotations

from ..dtypes import as_dtype
from ..errors import GraphError
from ..tensor_type import TensorType


def expect_float(op: str, name: str, t: TensorType) -> None:
    if not t.dtype.is_float:
        raise GraphError(f"op {op!r}: input {name!r} must be a float tensor, got {t}")


def expect_same_dtype(op: str, types: dict) -> None:
    items = [(k, t) for k, t in types.items() if t is not None]
    first = items[0][1].dtype
    for k, t in items[1:]:
        if t.dtype != first:
            raise GraphError(f"op {op!r}: input {k!r} has dtype {t.dtype}, expected {first} "
                             f"(like input {items[0][0]!r}); insert an explicit cast")


def expect_rank(op: str, name: str, t: TensorType, rank: int | tuple) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if t.rank not in ranks:
        raise GraphError(f"op {op!r}: input {name!r} must have rank {' or '.join(map(str, ranks))}, got {t}")


def expect_shape(op: str, name: str, t: TensorType, shape) -> None:
    if tuple(t.shape) != tuple(shape):
        raise GraphError(f"op {op!r}: input {name!r} must have shape {tuple(shape)}, got {t}")


def expect_int(op: str, name: str, t: TensorType) -> None:
    if not t.dtype.is_int:
        raise GraphError(f"op {op!r}: input {name!r} must be an integer tensor, got {t}")


def tt(shape, dtype) -> TensorType:
    return TensorType(tuple(shape), as_dtype(dtype))
