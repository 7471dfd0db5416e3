"""Layout and gather ops against torch. Data movement is exact, so every dtype must match bit for bit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from harness import FLOATS, INTS, TORCH_DTYPES, check, rand, run_op

TESTED_OPS = {"reshape", "transpose", "broadcast_to", "concat", "slice", "split", "pad", "gather",
              "take_along_axis", "embedding", "one_hot", "repeat_interleave"}

ALL = FLOATS + INTS + ("bool",)
EXACT = {"rtol": 0, "atol": 0}


@pytest.mark.parametrize("shape,new", [((2, 3, 4), (6, 4)), ((2, 3, 4), (-1,)), ((6,), (1, 2, 1, 3)),
                                       ((1, 4), (2, -1)), ((), (1, 1))])
@pytest.mark.parametrize("dtype", ALL)
def test_reshape(dtype, shape, new, rng):
    check("reshape", [rand(rng, shape, dtype)], lambda t: t.reshape(new), shape=new, **EXACT)


def test_reshape_errors():
    g = kiln.Graph()
    x = g.input("x", (2, 3), "float32")
    with pytest.raises(kiln.GraphError, match=r"6 elements\) to \(4, 2\)"):
        g.reshape(x, shape=[4, 2])
    with pytest.raises(kiln.GraphError, match="at most one -1"):
        g.reshape(x, shape=[-1, -1])


@pytest.mark.parametrize("shape,perm", [((2, 3), [1, 0]), ((2, 3, 4), [2, 0, 1]), ((1, 3, 1, 2), [3, 1, 0, 2]),
                                        ((2, 3, 4), [-1, 0, 1]), ((5,), [0])])
@pytest.mark.parametrize("dtype", ALL)
def test_transpose(dtype, shape, perm, rng):
    check("transpose", [rand(rng, shape, dtype)], lambda t: t.permute(*perm), perm=perm, **EXACT)


def test_transpose_rejects_non_permutation():
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match=r"perm \[0, 0\]"):
        g.transpose(g.input("x", (2, 3), "float32"), perm=[0, 0])


@pytest.mark.parametrize("shape,target", [((3,), (2, 3)), ((1, 4), (3, 4)), ((2, 1, 3), (4, 2, 5, 3)), ((), (2, 2)),
                                          ((3, 1), (3, 1))])
@pytest.mark.parametrize("dtype", ALL)
def test_broadcast_to(dtype, shape, target, rng):
    check("broadcast_to", [rand(rng, shape, dtype)], lambda t: t.broadcast_to(target), shape=target, **EXACT)


def test_broadcast_to_error():
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match=r"float32\[2, 3\] to \(4, 3\)"):
        g.broadcast_to(g.input("x", (2, 3), "float32"), shape=[4, 3])


@pytest.mark.parametrize("shapes,axis", [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 1), (2, 5)], -1),
                                         ([(1, 2, 3)], 1), ([(2, 0, 3), (2, 2, 3)], 1)])
@pytest.mark.parametrize("dtype", ALL)
def test_concat(dtype, shapes, axis, rng):
    xs = [rand(rng, s, dtype) for s in shapes]
    check("concat", [xs], lambda ts: torch.cat(ts, dim=axis), axis=axis, **EXACT)


def test_concat_names_incompatible_input():
    g = kiln.Graph()
    a, b = g.input("a", (2, 3), "float32"), g.input("b", (3, 3), "float32")
    with pytest.raises(kiln.GraphError, match=r"input 1 is float32\[3, 3\].*axis 1"):
        g.concat([a, b], axis=1)
    with pytest.raises(kiln.GraphError, match="input 1"):
        g.concat([a, g.input("c", (2, 3), "float16")], axis=0)


SLICES = [  # shape, axes, starts, ends, steps
    ((6,), [0], [1], [4], None),
    ((6,), [0], [-2], [100], [1]),
    ((6,), [0], [5], [None], [-1]),
    ((6,), [0], [None], [None], [-2]),
    ((7,), [0], [-1], [0], [-3]),
    ((7,), [0], [10], [-10], [-2]),
    ((4, 5, 6), [0, 2], [1, 0], [3, 6], [1, 2]),
    ((4, 5, 6), [-1, 1], [4, 3], [0, None], [-1, -2]),
    ((4, 5), [1], [3], [1], [1]),  # empty result
]


def _torch_slice(t, axes, starts, ends, steps):
    """Python's own slice semantics pick the indices; torch gathers them (negative steps included)."""
    for a, s, e, st in zip(axes, starts, ends, steps or [1] * len(axes)):
        idx = list(range(t.shape[a]))[s:e:st]
        t = torch.index_select(t, a, torch.tensor(idx, dtype=torch.long))
    return t


@pytest.mark.parametrize("shape,axes,starts,ends,steps", SLICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64", "bool"])
def test_slice(dtype, shape, axes, starts, ends, steps, rng):
    check("slice", [rand(rng, shape, dtype)], lambda t: _torch_slice(t, axes, starts, ends, steps),
          axes=axes, starts=starts, ends=ends, steps=steps, **EXACT)


def test_slice_errors():
    g = kiln.Graph()
    x = g.input("x", (4, 5), "float32")
    with pytest.raises(kiln.GraphError, match="step must not be 0"):
        g.slice(x, axes=[0], starts=[0], ends=[2], steps=[0])
    with pytest.raises(kiln.GraphError, match="differ in length"):
        g.slice(x, axes=[0, 1], starts=[0], ends=[2])
    with pytest.raises(kiln.GraphError, match="axis 2"):
        g.slice(x, axes=[2], starts=[0], ends=[1])


@pytest.mark.parametrize("shape,sizes,axis", [((6, 2), [1, 2, 3], 0), ((2, 5), [5], 1), ((2, 3, 4), [2, 0, 2], -1),
                                              ((3, 4), [1, 1, 1], -2)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "bool"])
def test_split(dtype, shape, sizes, axis, rng):
    check("split", [rand(rng, shape, dtype)], lambda t: tuple(torch.split(t, sizes, dim=axis)),
          sizes=sizes, axis=axis, **EXACT)


def test_split_sizes_must_sum_to_dim():
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match=r"sum to 6 \(axis 0"):
        g.split(g.input("x", (6, 2), "float32"), sizes=[2, 2])


def _torch_pads(pads):
    """kiln's per-axis (before, after) pairs -> F.pad's flat list, last axis first, leading zeros dropped
    (torch's reflect/replicate only take pads for the last 1-3 axes)."""
    out = []
    for before, after in reversed(pads):
        out += [before, after]
    while len(out) > 2 and out[-2:] == [0, 0]:
        out = out[:-2]
    return out


@pytest.mark.parametrize("shape,pads,value", [((3,), [(1, 2)], 0.0), ((2, 3), [(0, 1), (2, 0)], -1.5),
                                              ((2, 1, 3), [(1, 1), (0, 0), (3, 1)], 7.0), ((2, 2), [(0, 0), (0, 0)], 1.0)])
@pytest.mark.parametrize("dtype", FLOATS + INTS + ("bool",))
def test_pad_constant(dtype, shape, pads, value, rng):
    value = float(int(value) % 2) if dtype == "bool" else float(int(value)) if dtype in INTS else value
    value = abs(value) if dtype == "uint8" else value

    def ref(t):
        if t.dtype == torch.bool:  # F.pad has no bool kernel; pad 0/1 as uint8
            return F.pad(t.to(torch.uint8), _torch_pads(pads), value=value).bool()
        return F.pad(t, _torch_pads(pads), value=value)
    check("pad", [rand(rng, shape, dtype)], ref, pads=pads, value=value, **EXACT)


@pytest.mark.parametrize("shape,pads", [((2, 3, 5), [(0, 0), (0, 0), (2, 4)]),
                                        ((1, 2, 4, 5), [(0, 0), (0, 0), (3, 1), (1, 4)]),
                                        ((2, 3, 1), [(0, 0), (0, 0), (0, 0)])])
@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("dtype", FLOATS + ("int32",))
def test_pad_reflect_replicate(dtype, mode, shape, pads, rng):
    def ref(t):
        y = F.pad(t.double(), _torch_pads(pads), mode=mode)  # torch's reflect/replicate take floats only
        return y.to(t.dtype)
    check("pad", [rand(rng, shape, dtype)], ref, pads=pads, mode=mode, **EXACT)


def test_pad_errors():
    g = kiln.Graph()
    x = g.input("x", (2, 3), "float32")
    with pytest.raises(kiln.GraphError, match="one non-negative"):
        g.pad(x, pads=[(1, 1)])
    with pytest.raises(kiln.GraphError, match="reflect padding"):
        g.pad(x, pads=[(0, 0), (3, 0)], mode="reflect")
    with pytest.raises(kiln.GraphError, match="'wrap' is not one of"):
        g.pad(x, pads=[(0, 0), (1, 0)], mode="wrap")
    with pytest.raises(kiln.GraphError, match="value 0.5 is not an integer"):
        g.pad(g.input("i", (2,), "int32"), pads=[(1, 0)], value=0.5)


@pytest.mark.parametrize("xshape,ishape,axis", [((5, 3), (4,), 0), ((2, 6), (2, 3), 1), ((2, 3, 4), (), -1),
                                                ((4,), (2, 2), 0), ((3, 4, 2), (5,), 1)])
@pytest.mark.parametrize("idtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "int64", "bool"])
def test_gather(dtype, idtype, xshape, ishape, axis, rng):
    n = xshape[axis]
    idx = rng.integers(-n, n, ishape).astype(idtype)  # negative indices count from the end

    def ref(t, i):
        return t[(slice(None),) * (axis % t.ndim) + (i.long(),)]
    check("gather", [rand(rng, xshape, dtype), idx], ref, axis=axis, **EXACT)


@pytest.mark.parametrize("xshape,ishape,axis", [((3, 5), (3, 2), 1), ((3, 5), (4, 5), 0), ((2, 1, 4), (2, 3, 2), -1),
                                                ((2, 6), (1, 3), 1), ((4, 3), (4, 1), -1)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32"])
def test_take_along_axis(dtype, xshape, ishape, axis, rng):
    n = xshape[axis]
    idx = rng.integers(-n, n, ishape).astype(np.int64)

    def ref(t, i):
        return torch.take_along_dim(t, torch.where(i < 0, i + n, i), dim=axis)
    check("take_along_axis", [rand(rng, xshape, dtype), idx], ref, axis=axis, **EXACT)


@pytest.mark.parametrize("op,axis", [("gather", 0), ("take_along_axis", 0)])
def test_gather_out_of_range_index_raises(op, axis, rng):
    x = rand(rng, (3, 2), "float32")
    idx = np.array([[0, 3]] if op == "take_along_axis" else [0, 3], np.int64)
    with pytest.raises(IndexError, match=rf"{op}: index out of range \[-3, 3\)"):
        run_op(op, [x, idx], axis=axis)


@pytest.mark.parametrize("ishape", [(4,), (2, 3), ()])
@pytest.mark.parametrize("idtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", FLOATS + ("int64",))
def test_embedding(dtype, idtype, ishape, rng):
    ids = rng.integers(0, 7, ishape).astype(idtype)
    check("embedding", [ids, rand(rng, (7, 5), dtype)], lambda i, w: F.embedding(i.long(), w), out_dtype=dtype,
          **EXACT)


def test_embedding_rejects_bad_ids(rng):
    w = rand(rng, (4, 3))
    with pytest.raises(IndexError, match="negative token id"):
        run_op("embedding", [np.array([1, -1]), w])
    with pytest.raises(IndexError, match="out of range"):
        run_op("embedding", [np.array([4]), w])
    g = kiln.Graph()
    with pytest.raises(kiln.GraphError, match="'ids' must be an integer"):
        g.embedding(g.input("f", (2,), "float32"), g.input("w", (4, 3), "float32"))


@pytest.mark.parametrize("ishape,n", [((5,), 4), ((2, 3), 3), ((), 6)])
@pytest.mark.parametrize("dtype", FLOATS + INTS + ("bool",))
def test_one_hot(dtype, ishape, n, rng):
    ids = rng.integers(0, n, ishape).astype(np.int64)
    check("one_hot", [ids], lambda i: F.one_hot(i, n).to(TORCH_DTYPES[dtype]), out_dtype=dtype,
          num_classes=n, dtype=dtype, **EXACT)


def test_one_hot_rejects_out_of_range_ids():
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        run_op("one_hot", [np.array([0, 3])], num_classes=3)


@pytest.mark.parametrize("shape,repeats,axis", [((3,), 2, 0), ((2, 3), 3, 1), ((2, 1, 4), 2, -2), ((1, 2), 1, 0)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8", "bool"])
def test_repeat_interleave(dtype, shape, repeats, axis, rng):
    check("repeat_interleave", [rand(rng, shape, dtype)], lambda t: torch.repeat_interleave(t, repeats, dim=axis),
          repeats=repeats, axis=axis, **EXACT)
