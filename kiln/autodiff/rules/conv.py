"""Derivatives of convolution, pooling and resampling ops, composed from existing ops.

- conv: input gradient = conv_transpose of the cotangent (then cropped to the input);
  weight gradient = a conv of the input with the cotangent as kernel (batch and channel
  axes swapped, stride and dilation exchanged). conv_transpose is conv's adjoint, so its
  rules are the same pieces in the other order. Every piece is differentiable again.
- max_pool: each window's first maximum (torch's choice) receives the cotangent; one
  masked, strided slice per kernel tap.
- avg_pool: the cotangent divided by the window counts, spread back by a ones-kernel
  conv_transpose; adaptive_avg_pool: a constant averaging matrix per spatial dim.
- interpolate: its transpose is the `interpolate_backward` op; pixel_(un)shuffle invert each other.
"""

from __future__ import annotations

import itertools

import numpy as np

from kiln.ir import Graph
from kiln.ir.ops.conv import adaptive_bins, adaptive_output_size, conv_geometry, conv_transpose_geometry, pool_geometry

from ..registry import jvp_rule, vjp_rule
from ._util import add_terms, graph_of
from .layout import _place_along


def _nd(op: str) -> int:
    return int(op[-2])


def _pad_spatial(g: Graph, x, pads, value=0.0):
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    return g.pad(x, pads=[[0, 0], [0, 0]] + [[lo, hi] for lo, hi in pads], value=value)


def _fit_spatial(g: Graph, x, starts, sizes):
    """x's spatial dims cut to [start, start + size), zero-padded at the end where x is too short."""
    nd = len(sizes)
    tail = [max(0, st + sz - x.shape[2 + i]) for i, (st, sz) in enumerate(zip(starts, sizes))]
    x = _pad_spatial(g, x, [(0, t) for t in tail])
    if any(st != 0 or x.shape[2 + i] != sz for i, (st, sz) in enumerate(zip(starts, sizes))):
        x = g.slice(x, axes=list(range(2, 2 + nd)), starts=list(starts), ends=[st + sz for st, sz in zip(starts, sizes)])
    return x


def _bias_term(g: Graph, b, nd: int):
    return g.reshape(b, shape=[1, b.shape[0]] + [1] * nd)


def conv_weight_grad(g: Graph, x, dy, kernel, pads, stride, dilation, groups: int):
    """d weight [O, C/groups, *kernel] of y = conv(x, w) with the given geometry, from dy [N, O, *out]."""
    nd = len(kernel)
    n, c = x.shape[:2]
    o = dy.shape[1]
    cg, og = c // groups, o // groups
    xp = _pad_spatial(g, x, pads)
    sp = list(xp.shape[2:])
    # input [Cg, groups * N, *P], kernel [groups * Og, N, *out]: a grouped conv correlates them
    xi = g.reshape(g.transpose(g.reshape(xp, shape=[n, groups, cg] + sp), perm=[2, 1, 0] + list(range(3, 3 + nd))),
                   shape=[cg, groups * n] + sp)
    out_sp = list(dy.shape[2:])
    wk = g.reshape(g.transpose(g.reshape(dy, shape=[n, groups, og] + out_sp), perm=[1, 2, 0] + list(range(3, 3 + nd))),
                   shape=[groups * og, n] + out_sp)
    r = g.op(f"conv{nd}d", xi, wk, stride=list(dilation), dilation=list(stride), groups=groups)  # [Cg, O, *K']
    r = _fit_spatial(g, r, [0] * nd, list(kernel))
    return g.transpose(r, perm=[1, 0] + list(range(2, 2 + nd)))


def _conv_vjp(node, cts, needs):
    g = graph_of(node)
    x, w, b = node.inputs
    nd, a = _nd(node.op), node.attrs
    geo = conv_geometry(node.op, nd, x.shape, w.shape, a["stride"], a["padding"], a["dilation"], a["groups"])
    ct = cts[0]
    dx = dw = db = None
    if needs[0]:
        t = g.op(f"conv_transpose{nd}d", ct, w, stride=list(geo.stride), dilation=list(geo.dilation),
                 groups=a["groups"])
        dx = _fit_spatial(g, t, [lo for lo, _ in geo.pads], list(x.shape[2:]))
    if needs[1]:
        dw = conv_weight_grad(g, x, ct, w.shape[2:], geo.pads, geo.stride, geo.dilation, a["groups"])
    if b is not None and needs[2]:
        db = g.sum(ct, axes=[0] + list(range(2, 2 + nd)))
    return [dx, dw, db]


def _conv_transpose_vjp(node, cts, needs):
    g = graph_of(node)
    x, w, b = node.inputs
    nd, a = _nd(node.op), node.attrs
    geo = conv_transpose_geometry(node.op, nd, x.shape, w.shape, a["stride"], a["padding"], a["output_padding"],
                                  a["dilation"], a["groups"])
    ct = cts[0]
    pads = [(p, p) for p in geo.padding]
    dx = dw = db = None
    if needs[0]:  # conv_transpose is the adjoint of conv(., w) with the same stride, padding, dilation
        t = g.op(f"conv{nd}d", ct, w, stride=list(geo.stride), padding=[list(p) for p in pads],
                 dilation=list(geo.dilation), groups=a["groups"])
        dx = _fit_spatial(g, t, [0] * nd, list(x.shape[2:]))
    if needs[1]:
        dw = conv_weight_grad(g, ct, x, w.shape[2:], pads, geo.stride, geo.dilation, a["groups"])
    if b is not None and needs[2]:
        db = g.sum(ct, axes=[0] + list(range(2, 2 + nd)))
    return [dx, dw, db]


def _conv_jvp(node, tangents):
    g = graph_of(node)
    x, w, b = node.inputs
    tx, tw, tb = tangents
    attrs = node.attrs
    terms = [g.op(node.op, tx, w, **attrs) if tx is not None else None,
             g.op(node.op, x, tw, **attrs) if tw is not None else None,
             _bias_term(g, tb, _nd(node.op)) if tb is not None else None]
    return [add_terms(g, terms, node.outputs[0].shape)]


for _d in (1, 2, 3):
    vjp_rule(f"conv{_d}d")(_conv_vjp)
    vjp_rule(f"conv_transpose{_d}d")(_conv_transpose_vjp)
    jvp_rule(f"conv{_d}d", f"conv_transpose{_d}d")(_conv_jvp)


# ---- pooling ------------------------------------------------------------------------------

def pool_pads(x_shape, geo):
    """(lo, hi) pads that make every (ceil_mode) window lie inside the padded input."""
    pads = []
    for s, k, st, p, d, o in zip(x_shape[2:], geo.kernel, geo.stride, geo.padding, geo.dilation, geo.out_spatial):
        need = (o - 1) * st + d * (k - 1) + 1
        pads.append((p, max(need - s - p, p)))
    return pads


def _taps(g: Graph, xp, geo):
    """For every kernel tap (row-major), the strided slice of padded xp that it reads, and its ranges."""
    nd = len(geo.kernel)
    out = []
    for tap in itertools.product(*(range(k) for k in geo.kernel)):
        starts = [t * d for t, d in zip(tap, geo.dilation)]
        ends = [s + (o - 1) * st + 1 for s, o, st in zip(starts, geo.out_spatial, geo.stride)]
        v = g.slice(xp, axes=list(range(2, 2 + nd)), starts=starts, ends=ends, steps=list(geo.stride))
        out.append((v, [range(s, e, st) for s, e, st in zip(starts, ends, geo.stride)]))
    return out


def _max_pool_parts(node):
    """(geometry, pads, taps, first-hit masks): which tap holds each window's first maximum."""
    g = graph_of(node)
    x, y = node.inputs[0], node.outputs[0]
    a = node.attrs
    nd = _nd(node.op)
    geo = pool_geometry(node.op, nd, x.shape, a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                        a["ceil_mode"])
    pads = pool_pads(x.shape, geo)
    taps = _taps(g, _pad_spatial(g, x, pads, float("-inf")), geo)
    hits, taken = [], None
    for v, _ in taps:
        hit = g.equal(v, y)
        if taken is not None:
            hit = g.logical_and(hit, g.logical_not(taken))
        taken = hit if taken is None else g.logical_or(taken, hit)
        hits.append(hit)
    return geo, pads, taps, hits


@vjp_rule("max_pool1d", "max_pool2d", "max_pool3d")
def _max_pool_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    geo, pads, taps, hits = _max_pool_parts(node)
    zero = g.scalar(0, x.dtype)
    padded_shape = [s + lo + hi for s, (lo, hi) in zip(x.shape[2:], pads)]
    total = None
    for (_, ranges), hit in zip(taps, hits):
        part = g.where(hit, cts[0], zero)
        for i, r in enumerate(ranges):
            part = _place_along(g, part, 2 + i, padded_shape[i], r)
        total = part if total is None else g.add(total, part)
    return [_fit_spatial(g, total, [lo for lo, _ in pads], list(x.shape[2:]))]


@jvp_rule("max_pool1d", "max_pool2d", "max_pool3d")
def _max_pool_jvp(node, tangents):
    g = graph_of(node)
    geo, pads, _, hits = _max_pool_parts(node)
    zero = g.scalar(0, node.inputs[0].dtype)
    t_taps = _taps(g, _pad_spatial(g, tangents[0], pads), geo)
    terms = [g.where(hit, tv, zero) for (tv, _), hit in zip(t_taps, hits)]
    return [add_terms(g, terms, node.outputs[0].shape)]


def _avg_divisor(x_shape, geo, count_include_pad: bool, dtype) -> np.ndarray:
    """torch's per-window element counts [1, 1, *out] (clipped to the padded or the real input)."""
    nd = len(geo.kernel)
    div = np.ones([1, 1] + [1] * nd)
    for i, (s, k, st, p, o) in enumerate(zip(x_shape[2:], geo.kernel, geo.stride, geo.padding, geo.out_spatial)):
        start = np.arange(o) * st - p
        end = np.minimum(start + k, s + p)
        count = end - start if count_include_pad else np.minimum(end, s) - np.maximum(start, 0)
        shape = [1, 1] + [1] * nd
        shape[2 + i] = o
        div = div * count.reshape(shape)
    return div.astype(dtype)


@vjp_rule("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    a = node.attrs
    nd = _nd(node.op)
    geo = pool_geometry(node.op, nd, x.shape, a["kernel_size"], a["stride"], a["padding"], 1, a["ceil_mode"])
    if a["divisor_override"] is not None:
        scaled = cts[0] * (1.0 / a["divisor_override"])
    else:
        scaled = cts[0] / g.constant(_avg_divisor(x.shape, geo, a["count_include_pad"], x.dtype.np_dtype))
    n, c = x.shape[:2]
    flat = g.reshape(scaled, shape=[n * c, 1] + list(geo.out_spatial))
    ones = g.constant(np.ones([1, 1] + list(geo.kernel), x.dtype.np_dtype))
    spread = g.op(f"conv_transpose{nd}d", flat, ones, stride=list(geo.stride))
    spread = g.reshape(spread, shape=[n, c] + list(spread.shape[2:]))
    pads = pool_pads(x.shape, geo)
    return [_fit_spatial(g, spread, [lo for lo, _ in pads], list(x.shape[2:]))]


def _apply_along(g: Graph, x, axis: int, m: np.ndarray):
    """Contract x's `axis` with the constant matrix m [new, old]: x'[.., i, ..] = sum_j m[i, j] x[.., j, ..]."""
    shape = list(x.shape)
    pre, post = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    x3 = g.reshape(x, shape=[pre, shape[axis], post])
    y = g.matmul(g.constant(m.astype(x.dtype.np_dtype)), x3)
    return g.reshape(y, shape=shape[:axis] + [m.shape[0]] + shape[axis + 1:])


def adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in]: row i averages torch's adaptive bin i."""
    m = np.zeros((out_size, in_size))
    for i, (lo, hi) in enumerate(zip(*adaptive_bins(in_size, out_size))):
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


@vjp_rule("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")
def _adaptive_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    nd = _nd(node.op)
    out = adaptive_output_size(node.op, nd, x.shape, node.attrs["output_size"])
    ct = cts[0]
    for i, (s, o) in enumerate(zip(x.shape[2:], out)):
        ct = _apply_along(g, ct, 2 + i, adaptive_matrix(s, o).T)
    return [ct]


def _linear_jvp(node, tangents):
    """JVP of an op linear in its only input: the op on the tangent."""
    return [graph_of(node).op(node.op, tangents[0], **node.attrs)]


jvp_rule("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
         "adaptive_avg_pool3d", "interpolate", "interpolate_backward", "pixel_shuffle", "pixel_unshuffle")(_linear_jvp)


# ---- resampling ------------------------------------------------------------------------------

@vjp_rule("interpolate")
def _interpolate_vjp(node, cts, needs):
    x = node.inputs[0]
    return [graph_of(node).interpolate_backward(cts[0], input_size=list(x.shape[2:]), **node.attrs)]


@vjp_rule("interpolate_backward")
def _interpolate_backward_vjp(node, cts, needs):
    attrs = {k: v for k, v in node.attrs.items() if k != "input_size"}
    return [graph_of(node).interpolate(cts[0], **attrs)]


@vjp_rule("pixel_shuffle")
def _pixel_shuffle_vjp(node, cts, needs):
    return [graph_of(node).pixel_unshuffle(cts[0], downscale_factor=node.attrs["upscale_factor"])]


@vjp_rule("pixel_unshuffle")
def _pixel_unshuffle_vjp(node, cts, needs):
    return [graph_of(node).pixel_shuffle(cts[0], upscale_factor=node.attrs["downscale_factor"])]
