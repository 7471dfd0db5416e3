"""Derivatives of layout and gather ops: every one is linear in its data input.

Slice and pad transpose into compositions of slice / pad / reshape (no new ops),
gathers into the scatter-adds of `kiln.ir.ops.grad`.
"""

from __future__ import annotations

from kiln.ir.ops.layout import slice_dim
from kiln.ir.shapes import norm_axis

from ..registry import jvp_rule, vjp_rule
from ._util import graph_of, unbroadcast, zeros


def _same_op_on_tangent(node, tangents):
    """JVP of an op linear in its first input: the op applied to the tangent."""
    t = tangents[0]
    if t is None:
        return [None] * len(node.outputs)
    out = graph_of(node).op(node.op, t, *node.inputs[1:], **node.attrs)
    return list(out) if isinstance(out, tuple) else [out]


jvp_rule("reshape", "transpose", "broadcast_to", "slice", "split", "repeat_interleave")(_same_op_on_tangent)


@vjp_rule("reshape")
def _reshape_vjp(node, cts, needs):
    return [graph_of(node).reshape(cts[0], shape=list(node.inputs[0].shape))]


@vjp_rule("transpose")
def _transpose_vjp(node, cts, needs):
    rank = node.inputs[0].ndim
    perm = [norm_axis(p, rank) for p in node.attrs["perm"]]
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [graph_of(node).transpose(cts[0], perm=inverse)]


@vjp_rule("broadcast_to")
def _broadcast_to_vjp(node, cts, needs):
    return [unbroadcast(graph_of(node), cts[0], node.inputs[0].shape)]


@vjp_rule("repeat_interleave")
def _repeat_interleave_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    axis, r = norm_axis(node.attrs["axis"], x.ndim), node.attrs["repeats"]
    split = list(x.shape[:axis + 1]) + [r] + list(x.shape[axis + 1:])
    return [g.sum(g.reshape(cts[0], shape=split), axes=[axis + 1])]


# ---- concat / split -----------------------------------------------------------------

@vjp_rule("concat")
def _concat_vjp(node, cts, needs):
    g = graph_of(node)
    xs = node.inputs[0]
    axis = norm_axis(node.attrs["axis"], xs[0].ndim)
    out, start = [], 0
    for x, need in zip(xs, needs[0]):
        n = x.shape[axis]
        out.append(g.slice(cts[0], axes=[axis], starts=[start], ends=[start + n]) if need else None)
        start += n
    return [out]


@jvp_rule("concat")
def _concat_jvp(node, tangents):
    g = graph_of(node)
    ts = tangents[0]
    if all(t is None for t in ts):
        return [None]
    parts = [t if t is not None else zeros(g, x.shape, x.dtype) for t, x in zip(ts, node.inputs[0])]
    return [g.concat(parts, axis=node.attrs["axis"])]


@vjp_rule("split")
def _split_vjp(node, cts, needs):
    g = graph_of(node)
    parts = [ct if ct is not None else zeros(g, o.shape, o.dtype) for ct, o in zip(cts, node.outputs)]
    return [parts[0] if len(parts) == 1 else g.concat(parts, axis=node.attrs["axis"])]


# ---- slice ---------------------------------------------------------------------------

def _place_along(g, ct, axis: int, size: int, positions: range):
    """Put ct's entries along `axis` at the ascending, evenly spaced `positions` of a zero axis of `size`."""
    m = len(positions)
    if m == 0:
        shape = list(ct.shape)
        shape[axis] = size
        return zeros(g, shape, ct.dtype)
    step = positions.step if m > 1 else 1
    if step > 1:  # interleave step - 1 zeros after every entry, then drop the trailing ones
        shape = list(ct.shape)
        ct = g.reshape(ct, shape=shape[:axis + 1] + [1] + shape[axis + 1:])
        pads = [[0, 0]] * ct.ndim
        pads[axis + 1] = [0, step - 1]
        ct = g.pad(ct, pads=pads)
        ct = g.reshape(ct, shape=shape[:axis] + [m * step] + shape[axis + 1:])
        ct = g.slice(ct, axes=[axis], starts=[0], ends=[(m - 1) * step + 1])
    first = positions[0]
    after = size - first - ct.shape[axis]
    if first or after:
        pads = [[0, 0]] * ct.ndim
        pads[axis] = [first, after]
        ct = g.pad(ct, pads=pads)
    return ct


def _reverse(g, v, axis: int):
    n = v.shape[axis]
    return g.slice(v, axes=[axis], starts=[n - 1], ends=[-n - 1], steps=[-1])


@vjp_rule("slice")
def _slice_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    a = node.attrs
    ct = cts[0]
    steps = a["steps"] or [1] * len(a["axes"])
    for ax, s, e, st in zip(a["axes"], a["starts"], a["ends"], steps):
        ax = norm_axis(ax, x.ndim)
        r = slice_dim(x.shape[ax], s, e, st)
        if st < 0:  # taken in descending order: reverse, then place ascending
            if len(r) > 1:
                ct = _reverse(g, ct, ax)
            r = r[::-1]
        ct = _place_along(g, ct, ax, x.shape[ax], r)
    return [ct]


# ---- pad -----------------------------------------------------------------------------

def _pad_axis_vjp(g, ct, axis: int, n: int, lo: int, hi: int, mode: str):
    """Cotangent of one axis of a pad: [lo + n + hi] -> [n]."""
    mid = g.slice(ct, axes=[axis], starts=[lo], ends=[lo + n]) if (lo or hi) else ct
    if mode == "constant" or (lo == 0 and hi == 0):
        return mid
    pieces = [mid]
    if mode == "replicate":
        if lo:
            left = g.sum(g.slice(ct, axes=[axis], starts=[0], ends=[lo]), axes=[axis], keepdims=True)
            pieces.append(_pad_one(g, left, axis, 0, n - 1))
        if hi:
            right = g.sum(g.slice(ct, axes=[axis], starts=[lo + n], ends=[lo + n + hi]), axes=[axis], keepdims=True)
            pieces.append(_pad_one(g, right, axis, n - 1, 0))
    elif mode == "reflect":
        # out[i] = x[lo - i] for i < lo; out[lo + n + j] = x[n - 2 - j] for j < hi
        if lo:
            left = _reverse(g, g.slice(ct, axes=[axis], starts=[0], ends=[lo]), axis)  # x[1 .. lo]
            pieces.append(_pad_one(g, left, axis, 1, n - 1 - lo))
        if hi:
            right = _reverse(g, g.slice(ct, axes=[axis], starts=[lo + n], ends=[lo + n + hi]), axis)
            pieces.append(_pad_one(g, right, axis, n - 1 - hi, 1))  # x[n-1-hi .. n-2]
    else:
        raise ValueError(f"pad: unknown mode {mode!r}")
    out = pieces[0]
    for p in pieces[1:]:
        out = g.add(out, p)
    return out


def _pad_one(g, v, axis, lo, hi):
    if lo == 0 and hi == 0:
        return v
    pads = [[0, 0]] * v.ndim
    pads[axis] = [lo, hi]
    return g.pad(v, pads=pads)


@vjp_rule("pad")
def _pad_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    ct = cts[0]
    # np.pad pads axis 0 first, then axis 1 of the result, ...: undo in reverse order
    for axis in reversed(range(x.ndim)):
        lo, hi = node.attrs["pads"][axis]
        ct = _pad_axis_vjp(g, ct, axis, x.shape[axis], lo, hi, node.attrs["mode"])
    return [ct]


@jvp_rule("pad")
def _pad_jvp(node, tangents):
    attrs = dict(node.attrs, value=0.0)  # the pad value is a constant: its tangent is zero
    return [graph_of(node).pad(tangents[0], **attrs)]


# ---- gathers ---------------------------------------------------------------------------

@vjp_rule("gather")
def _gather_vjp(node, cts, needs):
    x, idx = node.inputs
    axis = norm_axis(node.attrs["axis"], x.ndim)
    return [graph_of(node).index_add(idx, cts[0], axis=axis, size=x.shape[axis]), None]


@jvp_rule("gather", "take_along_axis")
def _gather_jvp(node, tangents):
    if tangents[0] is None:
        return [None]
    return [graph_of(node).op(node.op, tangents[0], node.inputs[1], **node.attrs)]


@vjp_rule("take_along_axis")
def _take_along_axis_vjp(node, cts, needs):
    g = graph_of(node)
    x, idx = node.inputs
    axis = norm_axis(node.attrs["axis"], x.ndim)
    full = g.scatter_add(idx, cts[0], axis=axis, size=x.shape[axis])
    return [unbroadcast(g, full, x.shape), None]


@vjp_rule("embedding")
def _embedding_vjp(node, cts, needs):
    ids, w = node.inputs
    return [None, graph_of(node).index_add(ids, cts[0], axis=0, size=w.shape[0])]


@jvp_rule("embedding")
def _embedding_jvp(node, tangents):
    tw = tangents[1]
    return [graph_of(node).embedding(node.inputs[0], tw) if tw is not None else None]
