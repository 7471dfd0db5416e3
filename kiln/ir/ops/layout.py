"""Layout and gather ops: reshape, transpose, broadcast, concat, slice, split, pad, gathers."""

from __future__ import annotations

import math

from ..dtypes import as_dtype
from ..errors import GraphError
from ..op_spec import REQUIRED, OpSpec, register_op
from ..shapes import norm_axis
from ._rules import expect_int, expect_rank, tt


def _reshape(types, attrs):
    (x,) = types
    shape = list(attrs["shape"])
    if shape.count(-1) > 1:
        raise GraphError(f"op 'reshape': at most one -1 in shape {shape}")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or x.size % known:
            raise GraphError(f"op 'reshape': cannot reshape {x} to {shape}")
        shape[shape.index(-1)] = x.size // known
    if math.prod(shape) != x.size:
        raise GraphError(f"op 'reshape': cannot reshape {x} ({x.size} elements) to {tuple(shape)}")
    return tt(shape, x.dtype)


register_op(OpSpec("reshape", "layout", ("x",), _reshape, attrs={"shape": REQUIRED}))


def _transpose(types, attrs):
    (x,) = types
    perm = attrs["perm"]
    if sorted(norm_axis(p, x.rank) for p in perm) != list(range(x.rank)):
        raise GraphError(f"op 'transpose': perm {perm} is not a permutation of {x.rank} axes of {x}")
    return tt([x.shape[p] for p in perm], x.dtype)


register_op(OpSpec("transpose", "layout", ("x",), _transpose, attrs={"perm": REQUIRED}))


def _broadcast_to(types, attrs):
    (x,) = types
    shape = tuple(attrs["shape"])
    if len(shape) < x.rank or any(
            d != s and d != 1 for d, s in zip(x.shape[::-1], shape[::-1])):
        raise GraphError(f"op 'broadcast_to': cannot broadcast {x} to {shape}")
    return tt(shape, x.dtype)


register_op(OpSpec("broadcast_to", "layout", ("x",), _broadcast_to, attrs={"shape": REQUIRED}))


def _concat(types, attrs):
    (xs,) = types
    first = xs[0]
    axis = norm_axis(attrs["axis"], first.rank)
    total = 0
    for i, t in enumerate(xs):
        if t.dtype != first.dtype or t.rank != first.rank or any(
                a != b for j, (a, b) in enumerate(zip(t.shape, first.shape)) if j != axis):
            raise GraphError(f"op 'concat': input {i} is {t}, incompatible with input 0 {first} along axis {axis}")
        total += t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return tt(shape, first.dtype)


register_op(OpSpec("concat", "layout", ("*xs",), _concat, attrs={"axis": 0}))


def slice_dim(size: int, start, end, step) -> range:
    if step == 0:
        raise GraphError("op 'slice': step must not be 0")
    return range(size)[slice(start, end, step)]


def _slice(types, attrs):
    (x,) = types
    axes, starts, ends = attrs["axes"], attrs["starts"], attrs["ends"]
    steps = attrs["steps"] or [1] * len(axes)
    if not (len(axes) == len(starts) == len(ends) == len(steps)):
        raise GraphError(f"op 'slice': axes {axes}, starts {starts}, ends {ends}, steps {steps} differ in length")
    shape = list(x.shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = norm_axis(a, x.rank)
        shape[a] = len(slice_dim(x.shape[a], s, e, st))
    return tt(shape, x.dtype)


register_op(OpSpec("slice", "layout", ("x",), _slice,
                   attrs={"axes": REQUIRED, "starts": REQUIRED, "ends": REQUIRED, "steps": None}))


def _split(types, attrs):
    (x,) = types
    axis = norm_axis(attrs["axis"], x.rank)
    sizes = attrs["sizes"]
    if sum(sizes) != x.shape[axis] or any(s < 0 for s in sizes):
        raise GraphError(f"op 'split': sizes {sizes} must sum to {x.shape[axis]} (axis {axis} of {x})")
    outs = []
    for s in sizes:
        shape = list(x.shape)
        shape[axis] = s
        outs.append(tt(shape, x.dtype))
    return outs


register_op(OpSpec("split", "layout", ("x",), _split, attrs={"sizes": REQUIRED, "axis": 0},
                   num_outputs=lambda attrs: len(attrs["sizes"])))

PAD_MODES = ("constant", "reflect", "replicate")


def _pad(types, attrs):
    (x,) = types
    pads = attrs["pads"]
    if len(pads) != x.rank or any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in pads):
        raise GraphError(f"op 'pad': pads must be one non-negative (before, after) pair per axis of {x}, got {pads}")
    if attrs["mode"] not in PAD_MODES:
        raise GraphError(f"op 'pad': mode {attrs['mode']!r} is not one of {PAD_MODES}")
    if attrs["mode"] == "reflect" and any(max(p) >= d and max(p) > 0 for p, d in zip(pads, x.shape)):
        raise GraphError(f"op 'pad': reflect padding {pads} must be smaller than each dim of {x}")
    value = attrs["value"]
    if attrs["mode"] == "constant" and not x.dtype.is_float and value != int(value):
        raise GraphError(f"op 'pad': value {value!r} is not an integer, but input 'x' is {x}; "
                         f"padding would truncate it")
    if attrs["mode"] == "constant" and x.dtype.name == "bool" and value not in (0, 1):
        raise GraphError(f"op 'pad': value {value!r} must be 0 or 1 for bool input {x}")
    return tt([d + p[0] + p[1] for d, p in zip(x.shape, pads)], x.dtype)


register_op(OpSpec("pad", "layout", ("x",), _pad, attrs={"pads": REQUIRED, "mode": "constant", "value": 0.0}))


def _gather(types, attrs):
    x, idx = types
    expect_int("gather", "indices", idx)
    axis = norm_axis(attrs["axis"], x.rank)
    return tt(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)


register_op(OpSpec("gather", "gather", ("x", "indices"), _gather, attrs={"axis": 0},
                   doc="np.take(x, indices, axis)"))


def _take_along_axis(types, attrs):
    x, idx = types
    expect_int("take_along_axis", "indices", idx)
    axis = norm_axis(attrs["axis"], x.rank)
    if idx.rank != x.rank or any(a != b and a != 1 and b != 1 for j, (a, b) in
                                 enumerate(zip(x.shape, idx.shape)) if j != axis):
        raise GraphError(f"op 'take_along_axis': indices {idx} do not match x {x} outside axis {axis}")
    shape = [max(a, b) if j != axis else b for j, (a, b) in enumerate(zip(x.shape, idx.shape))]
    return tt(shape, x.dtype)


register_op(OpSpec("take_along_axis", "gather", ("x", "indices"), _take_along_axis, attrs={"axis": -1}))


def _embedding(types, attrs):
    ids, w = types
    expect_int("embedding", "ids", ids)
    expect_rank("embedding", "weight", w, 2)
    return tt(ids.shape + (w.shape[1],), w.dtype)


register_op(OpSpec("embedding", "gather", ("ids", "weight"), _embedding,
                   doc="weight[ids]: rows of a [vocab, dim] table"))


def _one_hot(types, attrs):
    (ids,) = types
    expect_int("one_hot", "ids", ids)
    if attrs["num_classes"] <= 0:
        raise GraphError(f"op 'one_hot': num_classes must be positive, got {attrs['num_classes']}")
    return tt(ids.shape + (attrs["num_classes"],), as_dtype(attrs["dtype"]))


register_op(OpSpec("one_hot", "gather", ("ids",), _one_hot, attrs={"num_classes": REQUIRED, "dtype": "float32"},
                   differentiable=False))


def _repeat_interleave(types, attrs):
    (x,) = types
    axis = norm_axis(attrs["axis"], x.rank)
    if attrs["repeats"] < 1:
        raise GraphError(f"op 'repeat_interleave': repeats must be >= 1, got {attrs['repeats']}")
    shape = list(x.shape)
    shape[axis] *= attrs["repeats"]
    return tt(shape, x.dtype)


register_op(OpSpec("repeat_interleave", "layout", ("x",), _repeat_interleave, attrs={"repeats": REQUIRED, "axis": 0}))
