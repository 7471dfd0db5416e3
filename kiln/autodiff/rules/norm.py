"""Derivatives of layer_norm, rms_norm and group_norm.

rms_norm's VJP is the fused rms_norm_backward op (one pass over x and dy; its decomposition,
`rms_norm_backward_terms`, is the same math in primitives); the others are composed from
primitives. Statistics are recomputed from x (nothing but x is saved); half inputs are
differentiated in float32 and rounded once, like their kernels.
"""

from __future__ import annotations

from ..registry import jvp_rule, vjp_rule
from ._util import add_terms, downcast, graph_of, upcast


def _sum_except_last(g, v):
    return g.sum(v, axes=list(range(v.ndim - 1))) if v.ndim > 1 else v


def _ln_stats(g, x, eps, axis=-1):
    """(xhat, rstd) for normalization over `axis` of float x."""
    mu = g.mean(x, axes=[axis], keepdims=True)
    xc = x - mu
    rstd = g.rsqrt(g.mean(xc * xc, axes=[axis], keepdims=True) + eps)
    return xc * rstd, rstd


def _ln_dx(g, d_xhat, xhat, rstd, axis=-1, center=True):
    """d x from d xhat for xhat = (x - mean) * rstd (center) or x * rstd (rms)."""
    proj = xhat * g.mean(d_xhat * xhat, axes=[axis], keepdims=True)
    if center:
        return rstd * (d_xhat - g.mean(d_xhat, axes=[axis], keepdims=True) - proj)
    return rstd * (d_xhat - proj)


def _rms_stats(g, x, eps):
    rstd = g.rsqrt(g.mean(x * x, axes=[-1], keepdims=True) + eps)
    return x * rstd, rstd


def _effective_weight(g, w, unit_offset):
    if w is None:
        return None
    return w + 1.0 if unit_offset else w


def rms_norm_backward_terms(g, x, w, dy, eps, add_unit_offset, weight_grad):
    """rms_norm_backward in primitives: [dx] or [dx, dweight], each in its input's dtype."""
    xf, ct = upcast(g, x), upcast(g, dy)
    xhat, rstd = _rms_stats(g, xf, eps)
    w_eff = _effective_weight(g, upcast(g, w), add_unit_offset)
    d_xhat = ct * w_eff if w_eff is not None else ct
    out = [downcast(g, _ln_dx(g, d_xhat, xhat, rstd, center=False), x.dtype)]
    if weight_grad:
        out.append(downcast(g, _sum_except_last(g, ct * xhat), w.dtype))
    return out


@vjp_rule("layer_norm", "rms_norm")
def _last_axis_norm_vjp(node, cts, needs):
    g = graph_of(node)
    x = node.inputs[0]
    if node.op == "rms_norm" and needs[0]:
        w = node.inputs[1]
        weight_grad = bool(len(needs) > 1 and needs[1])
        res = g.rms_norm_backward(x, w, cts[0], eps=node.attrs["eps"], add_unit_offset=node.attrs["add_unit_offset"],
                                  weight_grad=weight_grad)
        out = [None] * len(node.inputs)
        out[:2 if weight_grad else 1] = res if weight_grad else [res]
        return out
    w = upcast(g, node.inputs[1])
    xf, ct = upcast(g, x), upcast(g, cts[0])
    center = node.op == "layer_norm"
    xhat, rstd = _ln_stats(g, xf, node.attrs["eps"]) if center else _rms_stats(g, xf, node.attrs["eps"])
    w_eff = w if center else _effective_weight(g, w, node.attrs["add_unit_offset"])
    out = [None] * len(node.inputs)
    if needs[0]:
        d_xhat = ct * w_eff if w_eff is not None else ct
        out[0] = downcast(g, _ln_dx(g, d_xhat, xhat, rstd, center=center), x.dtype)
    if len(needs) > 1 and needs[1]:
        out[1] = downcast(g, _sum_except_last(g, ct * xhat), node.inputs[1].dtype)
    if len(needs) > 2 and needs[2]:
        out[2] = downcast(g, _sum_except_last(g, ct), node.inputs[2].dtype)
    return out


@jvp_rule("layer_norm", "rms_norm")
def _last_axis_norm_jvp(node, tangents):
    g = graph_of(node)
    x = node.inputs[0]
    w = upcast(g, node.inputs[1])
    tx, tw = upcast(g, tangents[0]), upcast(g, tangents[1]) if len(tangents) > 1 else None
    tb = upcast(g, tangents[2]) if len(tangents) > 2 else None
    xf = upcast(g, x)
    center = node.op == "layer_norm"
    xhat, rstd = _ln_stats(g, xf, node.attrs["eps"]) if center else _rms_stats(g, xf, node.attrs["eps"])
    w_eff = w if center else _effective_weight(g, w, node.attrs["add_unit_offset"])
    terms = []
    if tx is not None:
        # the normalization's Jacobian is symmetric, so d xhat = the same projection of tx
        t_xhat = _ln_dx(g, tx, xhat, rstd, center=center)
        terms.append(t_xhat * w_eff if w_eff is not None else t_xhat)
    if tw is not None:
        terms.append(xhat * tw)
    if tb is not None:
        terms.append(tb)
    return [downcast(g, add_terms(g, terms, xf.shape), x.dtype)]


def _group_view(x, groups):
    return [x.shape[0], groups, -1]


def _channel_shape(x):
    return [1, x.shape[1]] + [1] * (x.ndim - 2)


def _group_stats(g, xf, groups, eps):
    xg = g.reshape(xf, shape=_group_view(xf, groups))
    xhat_g, rstd = _ln_stats(g, xg, eps)
    return xhat_g, rstd


@vjp_rule("group_norm")
def _group_norm_vjp(node, cts, needs):
    g = graph_of(node)
    x, w, b = node.inputs
    groups = node.attrs["num_groups"]
    xf, ct = upcast(g, x), upcast(g, cts[0])
    xhat_g, rstd = _group_stats(g, xf, groups, node.attrs["eps"])
    xhat = g.reshape(xhat_g, shape=list(x.shape))
    chan_axes = [0] + list(range(2, x.ndim))
    out = [None, None, None]
    if needs[0]:
        d_xhat = ct * g.reshape(upcast(g, w), shape=_channel_shape(x)) if w is not None else ct
        d_xhat_g = g.reshape(d_xhat, shape=_group_view(x, groups))
        out[0] = downcast(g, g.reshape(_ln_dx(g, d_xhat_g, xhat_g, rstd), shape=list(x.shape)), x.dtype)
    if needs[1]:
        out[1] = downcast(g, g.sum(ct * xhat, axes=chan_axes), w.dtype)
    if needs[2]:
        out[2] = downcast(g, g.sum(ct, axes=chan_axes), b.dtype)
    return out


@jvp_rule("group_norm")
def _group_norm_jvp(node, tangents):
    g = graph_of(node)
    x, w, b = node.inputs
    tx, tw, tb = (upcast(g, t) for t in tangents)
    groups = node.attrs["num_groups"]
    xf = upcast(g, x)
    xhat_g, rstd = _group_stats(g, xf, groups, node.attrs["eps"])
    xhat = g.reshape(xhat_g, shape=list(x.shape))
    terms = []
    if tx is not None:
        t_xhat = g.reshape(_ln_dx(g, g.reshape(tx, shape=_group_view(x, groups)), xhat_g, rstd), shape=list(x.shape))
        terms.append(t_xhat * g.reshape(upcast(g, w), shape=_channel_shape(x)) if w is not None else t_xhat)
    if tw is not None:
        terms.append(xhat * g.reshape(tw, shape=_channel_shape(x)))
    if tb is not None:
        terms.append(g.reshape(tb, shape=_channel_shape(x)))
    return [downcast(g, add_terms(g, terms, xf.shape), x.dtype)]
