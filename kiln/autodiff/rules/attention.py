"""Derivatives of attention and rope.

Reverse mode swaps `attention` for `attention_lse` in the forward pass and differentiates it
with the fused `attention_backward` op, which recomputes probabilities from the saved
log-sum-exp instead of storing [Sq, Sk] probabilities. Forward mode and higher orders go
through decompositions of the three ops into primitives (they do materialize the scores).
Decompositions leave fully masked query rows undefined (NaN); the fused kernels give 0.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph
from kiln.ir.ops.attention import allowed_positions

from ..registry import decomposition, grad_forward, jvp_rule, vjp_rule
from ._util import add_terms, downcast, graph_of, unbroadcast, upcast


def _repeat_heads(g: Graph, x, hq: int):
    return g.repeat_interleave(x, repeats=hq // x.shape[1], axis=1) if x.shape[1] != hq else x


def _sum_heads(g: Graph, x, hk: int):
    b, hq = x.shape[:2]
    if hq == hk:
        return x
    return g.sum(g.reshape(x, shape=[b, hk, hq // hk] + list(x.shape[2:])), axes=[2])


def _scores(g: Graph, q, k, mask, attrs):
    """(capped scores before masking, masked scores, scale), in q's (float32 for halves) dtype."""
    hq = q.shape[1]
    scale = q.shape[-1] ** -0.5 if attrs["scale"] is None else attrs["scale"]
    s = g.matmul(q, _repeat_heads(g, k, hq), transpose_b=True) * scale
    cap = attrs["softcap"]
    if cap is not None:
        s = g.tanh(s * (1.0 / cap)) * cap
    masked = s
    neg_inf = g.scalar(float("-inf"), s.dtype)
    if mask is not None:
        masked = g.where(mask, masked, neg_inf) if not mask.dtype.is_float else masked + upcast(g, mask)
    allowed = allowed_positions(q.shape[2], k.shape[2], attrs["causal"], attrs["window"])
    if allowed is not None:
        masked = g.where(g.constant(allowed), masked, neg_inf)
    return s, masked, scale


def _lse(g: Graph, masked):
    m = g.max(masked, axes=[-1], keepdims=True)
    lse = g.log(g.sum(g.exp(masked - m), axes=[-1], keepdims=True)) + m
    return lse  # [B, H, Sq, 1]


@decomposition("attention")
def _attention_decomposed(g: Graph, inputs, attrs):
    q, k, v, mask = inputs
    _, masked, _ = _scores(g, upcast(g, q), upcast(g, k), mask, attrs)
    p = g.softmax(masked, axis=-1)
    return [downcast(g, g.matmul(p, _repeat_heads(g, upcast(g, v), q.shape[1])), q.dtype)]


@decomposition("attention_lse")
def _attention_lse_decomposed(g: Graph, inputs, attrs):
    q, k, v, mask = inputs
    _, masked, _ = _scores(g, upcast(g, q), upcast(g, k), mask, attrs)
    lse = _lse(g, masked)
    out = g.matmul(g.exp(masked - lse), _repeat_heads(g, upcast(g, v), q.shape[1]))
    return [downcast(g, out, q.dtype), g.reshape(lse, shape=list(q.shape[:3]))]


@decomposition("attention_backward")
def _attention_backward_decomposed(g: Graph, inputs, attrs):
    q, k, v, mask, out, lse, dout, dlse = inputs
    qf, kf, vf = upcast(g, q), upcast(g, k), upcast(g, v)
    hq, hk = q.shape[1], k.shape[1]
    capped, masked, scale = _scores(g, qf, kf, mask, attrs)
    p = g.exp(masked - g.reshape(lse, shape=list(lse.shape) + [1]))
    do = upcast(g, dout)
    dv = _sum_heads(g, g.matmul(p, do, transpose_a=True), hk)
    dp = g.matmul(do, _repeat_heads(g, vf, hq), transpose_b=True)
    row = g.sum(do * upcast(g, out), axes=[-1], keepdims=True)
    if dlse is not None:
        row = row - g.reshape(dlse, shape=list(dlse.shape) + [1])
    ds = p * (dp - row)
    dmask = ds
    cap = attrs["softcap"]
    if cap is not None:
        c = capped * (1.0 / cap)
        ds = ds * (1.0 - c * c)
    ds = ds * scale
    dq = g.matmul(ds, _repeat_heads(g, kf, hq))
    dk = _sum_heads(g, g.matmul(ds, qf, transpose_a=True), hk)
    grads = [downcast(g, dq, q.dtype), downcast(g, dk, k.dtype), downcast(g, dv, v.dtype)]
    if attrs["mask_grad"]:
        grads.append(downcast(g, dmask, q.dtype))
    return grads


@grad_forward("attention")
def _attention_for_grad(g: Graph, inputs, attrs):
    out, _lse_ = g.attention_lse(*inputs, **attrs)
    return [out]


@vjp_rule("attention_lse")
def _attention_lse_vjp(node, cts, needs):
    g = graph_of(node)
    q, k, v, mask = node.inputs
    out, lse = node.outputs
    dout, dlse = cts
    if dout is None:
        dout = g.broadcast_to(g.scalar(0, out.dtype), shape=list(out.shape))
    mask_grad = bool(needs[3]) and mask is not None and mask.dtype.is_float
    res = g.attention_backward(q, k, v, mask, out, lse, dout, dlse, mask_grad=mask_grad, **node.attrs)
    grads = [res[0] if needs[0] else None, res[1] if needs[1] else None, res[2] if needs[2] else None, None]
    if mask_grad:
        grads[3] = unbroadcast(g, res[3], mask.shape)
    return grads


# ---- rope ------------------------------------------------------------------------------

def _rot_halves(g: Graph, x, rot: int, layout: str):
    """The two rotated halves (x1, x2) of x's first `rot` dims."""
    ax = x.ndim - 1
    if layout == "half":
        return (g.slice(x, axes=[ax], starts=[0], ends=[rot // 2]),
                g.slice(x, axes=[ax], starts=[rot // 2], ends=[rot]))
    return (g.slice(x, axes=[ax], starts=[0], ends=[rot], steps=[2]),
            g.slice(x, axes=[ax], starts=[1], ends=[rot], steps=[2]))


def _rope_table_grads(g: Graph, x, ct, cos, needs_cos: bool, needs_sin: bool, layout: str):
    """d cos and d sin: out1 = x1 c - x2 s, out2 = x2 c + x1 s, summed over heads (and batch if broadcast)."""
    rot = 2 * cos.shape[-1]
    x1, x2 = _rot_halves(g, x, rot, layout)
    g1, g2 = _rot_halves(g, ct, rot, layout)

    def reduce(v):
        v = g.sum(v, axes=[1])  # heads
        return g.sum(v, axes=[0], keepdims=True) if cos.shape[0] == 1 and v.shape[0] != 1 else v

    dcos = reduce(g1 * x1 + g2 * x2) if needs_cos else None
    dsin = reduce(g2 * x1 - g1 * x2) if needs_sin else None
    return dcos, dsin


@vjp_rule("rope")
def _rope_vjp(node, cts, needs):
    g = graph_of(node)
    x, cos, sin = node.inputs
    layout = node.attrs["layout"]
    ct = cts[0]
    dx = g.rope(ct, cos, -sin, layout=layout) if needs[0] else None  # rotations are orthogonal
    dcos = dsin = None
    if needs[1] or needs[2]:
        xf, cf = upcast(g, x), upcast(g, ct)
        dcos, dsin = _rope_table_grads(g, xf, cf, cos, needs[1], needs[2], layout)
        dcos, dsin = downcast(g, dcos, cos.dtype), downcast(g, dsin, sin.dtype)
    return [dx, dcos, dsin]


@jvp_rule("rope")
def _rope_jvp(node, tangents):
    g = graph_of(node)
    x, cos, sin = node.inputs
    tx, tc, ts = tangents
    layout = node.attrs["layout"]
    terms = [g.rope(tx, cos, sin, layout=layout) if tx is not None else None]
    if tc is not None or ts is not None:
        zero = g.broadcast_to(g.scalar(0, cos.dtype), shape=list(cos.shape))
        part = g.rope(x, tc if tc is not None else zero, ts if ts is not None else zero, layout=layout)
        rot, d = 2 * cos.shape[-1], x.shape[-1]
        if rot < d:  # rope passes dims past `rot` through; their tangent from cos/sin is zero
            keep = np.concatenate([np.ones(rot), np.zeros(d - rot)]).astype(x.dtype.np_dtype)
            part = part * g.constant(keep)
        terms.append(part)
    return [add_terms(g, terms, node.outputs[0].shape)]
