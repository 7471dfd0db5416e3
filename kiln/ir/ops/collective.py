"""Collectives across the ranks of a process group: all_reduce, all_gather, reduce_scatter.

Every collective names the group's size (`world`) as an attribute, so shapes stay static:
all_gather concatenates `world` shards along an axis, reduce_scatter keeps this rank's
1/world of the reduced tensor. With world == 1 a collective is its single-process meaning
(identity; the concatenation of one shard), which is what graphs built without a group and
the gradient tests see. On real ranks the backends call torch.distributed (gloo for NumPy
arrays on the CPU, NCCL for CUDA tensors); every rank runs the same graph, so the ranks
issue the same collectives in the same order.

Derivatives are the adjoints under the objective "sum over ranks of each rank's value":
all_reduce's is all_reduce, all_gather's is reduce_scatter and the other way round.
"""

from __future__ import annotations

from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ..tensor_type import TensorType

REDUCTIONS = ("sum", "mean")


def _world(op: str, attrs) -> int:
    w = attrs["world"]
    if not isinstance(w, int) or isinstance(w, bool) or w < 1:
        raise GraphError(f"op {op!r}: world must be a positive int (the group's size), got {w!r}")
    if attrs.get("reduce", "sum") not in REDUCTIONS:
        raise GraphError(f"op {op!r}: reduce must be one of {REDUCTIONS}, got {attrs['reduce']!r}")
    return w


def _axis(op: str, x, attrs) -> int:
    a = attrs["axis"]
    if not isinstance(a, int) or not -x.rank <= a < x.rank:
        raise GraphError(f"op {op!r}: axis {a!r} is out of range for {x}")
    return a % x.rank


def _all_reduce(types, attrs):
    (x,) = types
    _world("all_reduce", attrs)
    if not x.dtype.is_float:
        raise GraphError(f"op 'all_reduce': x must be a float tensor, got {x}")
    return x


def _all_gather(types, attrs):
    (x,) = types
    w = _world("all_gather", attrs)
    a = _axis("all_gather", x, attrs)
    shape = list(x.shape)
    shape[a] *= w
    return TensorType(tuple(shape), x.dtype)


def _reduce_scatter(types, attrs):
    (x,) = types
    w = _world("reduce_scatter", attrs)
    a = _axis("reduce_scatter", x, attrs)
    if not x.dtype.is_float:
        raise GraphError(f"op 'reduce_scatter': x must be a float tensor, got {x}")
    if x.shape[a] % w:
        raise GraphError(f"op 'reduce_scatter': axis {a} of {x} does not split into {w} equal shards")
    shape = list(x.shape)
    shape[a] //= w
    return TensorType(tuple(shape), x.dtype)


register_op(OpSpec("all_reduce", "collective", ("x",), _all_reduce, attrs={"world": 1, "reduce": "sum"},
                   doc="every rank gets the sum (or mean) of x over the group's `world` ranks"))
register_op(OpSpec("all_gather", "collective", ("x",), _all_gather, attrs={"world": 1, "axis": 0},
                   doc="the ranks' x concatenated in rank order along axis"))
register_op(OpSpec("reduce_scatter", "collective", ("x",), _reduce_scatter,
                   attrs={"world": 1, "axis": 0, "reduce": "sum"},
                   doc="shard `rank` (along axis) of the sum (or mean) of x over the group"))
