"""One small case per differentiable op (and its interesting attribute variants) with a torch
reference: the gradient, JVP, HVP and vmap tests all run over this table.

Inputs are given as specs (shape + kind) and sampled per test; `ref` receives torch tensors in
the op's input order (lists for variadic inputs, None for absent optionals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Fl:
    """A float input: standard normal, or uniform in [lo, hi), optionally with a random sign."""
    shape: tuple
    lo: float | None = None
    hi: float | None = None
    signed: bool = False


@dataclass(frozen=True)
class In:
    """An int64 input, uniform in [lo, hi)."""
    shape: tuple
    lo: int
    hi: int


@dataclass(frozen=True)
class Bo:
    shape: tuple


@dataclass
class Case:
    op: str
    ins: list
    ref: Callable
    attrs: dict = field(default_factory=dict)
    id: str = ""
    make: Callable | None = None   # make(rng, dtype) -> arrays, instead of sampling `ins`
    vmap: bool = True              # batch it in the vmap test
    hvp: bool = True

    @property
    def name(self) -> str:
        return f"{self.op}-{self.id}" if self.id else self.op


def sample(spec, rng, dtype):
    if spec is None:
        return None
    if isinstance(spec, list):
        return [sample(s, rng, dtype) for s in spec]
    if isinstance(spec, Fl):
        if spec.lo is None:
            x = rng.standard_normal(spec.shape)
        else:
            x = rng.uniform(spec.lo, spec.hi, spec.shape)
            if spec.signed:
                x = x * rng.choice([-1.0, 1.0], spec.shape)
        return np.asarray(x, dtype)
    if isinstance(spec, In):
        return rng.integers(spec.lo, spec.hi, spec.shape).astype(np.int64)
    if isinstance(spec, Bo):
        return rng.random(spec.shape) < 0.6
    raise TypeError(spec)


def inputs_for(case: Case, rng, dtype="float64"):
    if case.make is not None:
        return case.make(rng, np.dtype(dtype))
    return [sample(s, rng, np.dtype(dtype)) for s in case.ins]


# ---- torch references that need a few lines ---------------------------------------------

def t_axes(x, axes):
    return list(range(x.ndim)) if axes is None else axes


def t_slice(x, axes, starts, ends, steps=None):
    steps = steps or [1] * len(axes)
    for a, s, e, st in zip(axes, starts, ends, steps):
        idx = torch.tensor(list(range(x.shape[a])[slice(s, e, st)]), dtype=torch.long)
        x = x.index_select(a, idx)
    return x


def t_pad(x, pads, mode="constant", value=0.0):
    if mode == "constant":
        flat = [p for pair in reversed(pads) for p in pair]
        return F.pad(x, flat, value=value)
    for a, (lo, hi) in enumerate(pads):  # index maps from numpy's pad of an arange (per axis, in order)
        idx = np.pad(np.arange(x.shape[a]), (lo, hi), mode={"reflect": "reflect", "replicate": "edge"}[mode])
        x = x.index_select(a, torch.from_numpy(idx))
    return x


def t_gather(x, idx, axis=0):
    axis %= x.ndim
    flat = x.index_select(axis, (idx % x.shape[axis]).reshape(-1))
    return flat.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def t_index_add(idx, src, axis=0, size=None):
    r = idx.ndim
    shape = src.shape[:axis] + (size,) + src.shape[axis + r:]
    flat_src = src.reshape(src.shape[:axis] + (-1,) + src.shape[axis + r:])
    return torch.zeros(shape, dtype=src.dtype).index_add(axis, (idx % size).reshape(-1), flat_src)


def t_scatter_add(idx, src, axis=-1, size=None):
    shape = list(src.shape)
    shape[axis] = size
    return torch.zeros(shape, dtype=src.dtype).scatter_add(axis, idx.expand(src.shape), src)


def t_allowed(sq, sk, causal, window):
    qpos = torch.arange(sq)[:, None] + (sk - sq)
    kpos = torch.arange(sk)[None, :]
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        ok &= kpos <= qpos
    if window is not None:
        ok &= (qpos - kpos) < window
        if not causal:
            ok &= (kpos - qpos) < window
    return ok


def t_scores(q, k, mask, causal=False, scale=None, window=None, softcap=None):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    capped = s if softcap is None else softcap * torch.tanh(s / softcap)
    s = capped
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    s = s.masked_fill(~t_allowed(q.shape[2], k.shape[2], causal, window), float("-inf"))
    return capped, s, scale


def t_attention(q, k, v, mask=None, **attrs):
    _, s, _ = t_scores(q, k, mask, **attrs)
    return torch.softmax(s, -1) @ v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)


def t_attention_lse(q, k, v, mask=None, **attrs):
    return t_attention(q, k, v, mask, **attrs), torch.logsumexp(t_scores(q, k, mask, **attrs)[1], -1)


def t_attention_backward(q, k, v, mask, out, lse, dout, dlse, mask_grad=False, **attrs):
    """The op's formula written out in torch (out and lse are inputs, as in the op)."""
    hq, hk = q.shape[1], k.shape[1]
    capped, s, scale = t_scores(q, k, mask, **attrs)
    p = torch.exp(s - lse[..., None])
    vr, kr = v.repeat_interleave(hq // hk, 1), k.repeat_interleave(hq // hk, 1)
    dv = (p.transpose(-1, -2) @ dout)
    dp = dout @ vr.transpose(-1, -2)
    row = (dout * out).sum(-1, keepdim=True)
    if dlse is not None:
        row = row - dlse[..., None]
    ds = p * (dp - row)
    dmask = ds
    if attrs.get("softcap") is not None:
        ds = ds * (1 - (capped / attrs["softcap"]) ** 2)
    ds = ds * scale
    dq = ds @ kr
    dk = ds.transpose(-1, -2) @ q

    def heads(x):
        return x.reshape(x.shape[0], hk, hq // hk, *x.shape[2:]).sum(2)
    res = (dq, heads(dk), heads(dv))
    return res + (dmask,) if mask_grad else res


def make_attention_backward(shape, mask_kind=None, dlse=True, **attrs):
    b, hq, hk, sq, sk, d = shape

    def make(rng, dt):
        q, k, v = (rng.standard_normal(s).astype(dt) for s in ((b, hq, sq, d), (b, hk, sk, d), (b, hk, sk, d)))
        mask = None
        if mask_kind == "float":
            mask = rng.standard_normal((1, 1, sq, sk)).astype(dt)
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        tm = None if mask is None else torch.from_numpy(mask)
        out, lse = (t.numpy() for t in t_attention_lse(tq, tk, tv, tm, **attrs))
        dout = rng.standard_normal(out.shape).astype(dt)
        dl = rng.standard_normal(lse.shape).astype(dt) if dlse else None
        return [q, k, v, mask, out, lse, dout, dl]
    return make


def t_softmax_cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.0):
    """torch's per-row cross-entropy (reduction 'none') and the rows' logsumexp."""
    v = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, v), labels.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none")
    return loss.reshape(labels.shape), torch.logsumexp(logits, -1)


def t_softmax_cross_entropy_backward(logits, labels, lse, dloss, dlse, ignore_index=-100, label_smoothing=0.0):
    """The op's formula written out in torch (lse is an input, as in the op)."""
    valid = labels != ignore_index
    d = torch.where(valid, dloss, torch.zeros_like(dloss))
    row = d if dlse is None else d + dlse
    onehot = F.one_hot(torch.where(valid, labels, 0), logits.shape[-1]).to(logits.dtype)
    target = (1 - label_smoothing) * onehot + label_smoothing / logits.shape[-1]
    return torch.exp(logits - lse[..., None]) * row[..., None] - target * d[..., None]


def t_rms_norm_backward(x, w, dy, eps=1e-6, add_unit_offset=False, weight_grad=False):
    """torch's own VJP of F.rms_norm (torch.func: composes with the transforms the tests apply)."""
    def norm(x, w):
        weight = None if w is None else (1 + w) if add_unit_offset else w
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    if w is None:
        return torch.func.vjp(lambda x: norm(x, None), x)[1](dy)[0]
    dx, dw = torch.func.vjp(norm, x, w)[1](dy)
    return (dx, dw) if weight_grad else dx


def make_cross_entropy(shape, ignore_index=-100, backward=False, dlse=True):
    """logits [*shape], labels with the first row ignored (and, for the backward, the true lse and
    random cotangents)."""
    def make(rng, dt):
        logits = rng.standard_normal(shape).astype(dt)
        labels = rng.integers(0, shape[-1], shape[:-1])
        labels.reshape(-1)[0] = ignore_index
        if not backward:
            return [logits, labels]
        lse = torch.logsumexp(torch.from_numpy(logits), -1).numpy()
        dl = rng.standard_normal(shape[:-1]).astype(dt) if dlse else None
        return [logits, labels, lse, rng.standard_normal(shape[:-1]).astype(dt), dl]
    return make


def t_rope(x, cos, sin, layout="half"):
    c, s = cos[:, None], sin[:, None]
    rot = 2 * cos.shape[-1]
    xr, rest = x[..., :rot], x[..., rot:]
    if layout == "half":
        x1, x2 = xr[..., :rot // 2], xr[..., rot // 2:]
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], -1).reshape(xr.shape)
    return torch.cat([out, rest], -1)


def t_fused_linear(x, w, b=None, r=None, nw=None, nb=None, activation="none", norm="none", eps=1e-5,
                   add_unit_offset=False):
    if norm == "rms_norm":
        x = F.rms_norm(x, (x.shape[-1],), (1 + nw) if add_unit_offset else nw, eps)
    elif norm == "layer_norm":
        x = F.layer_norm(x, (x.shape[-1],), nw, nb, eps)
    y = F.linear(x, w, b)
    y = {"none": lambda t: t, "silu": F.silu, "relu": F.relu, "gelu": F.gelu,
         "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[activation](y)
    return y + r if r is not None else y


def t_matmul(a, b, transpose_a=False, transpose_b=False):
    return (a.mT if transpose_a else a) @ (b.mT if transpose_b else b)


def t_interpolate_backward(dy, input_size, **kw):
    """The adjoint of F.interpolate, taken from torch's own VJP."""
    x = torch.zeros(tuple(dy.shape[:2]) + tuple(input_size), dtype=dy.dtype)
    _, pullback = torch.func.vjp(lambda t: F.interpolate(t, **kw), x)
    return pullback(dy)[0]


def t_conv_pairs(fn, pads):
    """conv with per-dim (lo, hi) pads: pad explicitly, then convolve unpadded."""
    def run(x, w, b=None, **kw):
        flat = [p for pair in reversed(pads) for p in pair]
        return fn(F.pad(x, flat), w, b, **kw)
    return run


# ---- the table ------------------------------------------------------------------------------

X = Fl((3, 4))
POS = Fl((3, 4), 0.5, 2.0)

CASES: list[Case] = [
    Case("exp", [X], torch.exp),
    Case("log", [POS], torch.log),
    Case("sqrt", [POS], torch.sqrt),
    Case("rsqrt", [POS], torch.rsqrt),
    Case("sin", [X], torch.sin),
    Case("cos", [X], torch.cos),
    Case("tanh", [X], torch.tanh),
    Case("sigmoid", [X], torch.sigmoid),
    Case("silu", [X], F.silu),
    Case("erf", [X], torch.erf),
    Case("gelu", [X], F.gelu),
    Case("gelu", [X], lambda x: F.gelu(x, approximate="tanh"), {"approximate": "tanh"}, "tanh"),
    Case("neg", [X], torch.neg),
    Case("abs", [Fl((3, 4), 0.1, 2.0, True)], torch.abs),
    Case("relu", [Fl((3, 4), 0.1, 2.0, True)], F.relu),
    Case("clamp", [X], lambda x: torch.clamp(x, -0.5, 0.7), {"min": -0.5, "max": 0.7}),
    Case("clamp", [X], lambda x: torch.clamp(x, min=0.1), {"min": 0.1}, "min_only"),
    Case("cast", [X], lambda x: x.float(), {"dtype": "float32"}, "to_float32", vmap=True),
    Case("add", [Fl((3, 4)), Fl((4,))], torch.add),
    Case("sub", [Fl((3, 1)), Fl((2, 1, 4))], torch.sub),
    Case("mul", [Fl((3, 4)), Fl((3, 1))], torch.mul),
    Case("div", [Fl((3, 4)), Fl((4,), 0.5, 2.0, True)], torch.div),
    Case("pow", [Fl((3, 4), 0.5, 2.0), Fl((3, 4))], torch.pow),
    Case("pow", [Fl((3, 4), 0.5, 2.0), Fl((), 1.5, 2.5)], torch.pow, id="scalar_exponent"),
    Case("maximum", [X, Fl((4,))], torch.maximum),
    Case("minimum", [X, Fl((3, 1))], torch.minimum),
    Case("where", [Bo((3, 4)), Fl((3, 4)), Fl((4,))], torch.where),
    Case("swiglu", [X, X], lambda a, b: F.silu(a) * b),
    Case("geglu", [X, Fl((4,))], lambda a, b: F.gelu(a, approximate="tanh") * b, {"approximate": "tanh"}),
    Case("geglu", [X, X], lambda a, b: F.gelu(a) * b, id="erf"),
    # reductions
    Case("sum", [Fl((2, 3, 4))], lambda x: x.sum()),
    Case("sum", [Fl((2, 3, 4))], lambda x: x.sum((0, 2), keepdim=True), {"axes": [0, 2], "keepdims": True}, "keep"),
    Case("mean", [Fl((2, 3, 4))], lambda x: x.mean(1), {"axes": 1}),
    Case("max", [Fl((2, 3, 4))], lambda x: torch.amax(x, (1,)), {"axes": [1]}),
    Case("max", [Fl((2, 3))], lambda x: torch.amax(x), id="all"),
    Case("min", [Fl((2, 3, 4))], lambda x: torch.amin(x, (0, 2), keepdim=True), {"axes": [0, 2], "keepdims": True}),
    Case("softmax", [Fl((2, 3, 4))], lambda x: torch.softmax(x, -1)),
    Case("softmax", [Fl((2, 3, 4))], lambda x: torch.softmax(x, 1), {"axis": 1}, "axis1"),
    Case("log_softmax", [Fl((2, 3, 4))], lambda x: torch.log_softmax(x, -1)),
    Case("log_softmax", [Fl((2, 3, 4))], lambda x: torch.log_softmax(x, 0), {"axis": 0}, "axis0"),
    # matmul
    Case("matmul", [Fl((2, 3, 4)), Fl((4, 5))], t_matmul),
    Case("matmul", [Fl((4, 3)), Fl((2, 1, 4, 5))], lambda a, b: t_matmul(a, b, True), {"transpose_a": True}, "ta"),
    Case("matmul", [Fl((2, 3, 4)), Fl((2, 5, 4))], lambda a, b: t_matmul(a, b, False, True),
         {"transpose_b": True}, "tb"),
    Case("matmul", [Fl((1, 4, 3)), Fl((2, 5, 4))], lambda a, b: t_matmul(a, b, True, True),
         {"transpose_a": True, "transpose_b": True}, "tatb"),
    Case("linear", [Fl((2, 3, 4)), Fl((5, 4)), Fl((5,))], F.linear),
    Case("linear", [Fl((3, 4)), Fl((5, 4))], F.linear, id="nobias"),
    Case("linear", [Fl((4,)), Fl((5, 4)), Fl((5,))], F.linear, id="vector"),
    # layout
    Case("reshape", [Fl((2, 6))], lambda x: x.reshape(3, 4), {"shape": [3, -1]}),
    Case("transpose", [Fl((2, 3, 4))], lambda x: x.permute(2, 0, 1), {"perm": [2, 0, 1]}),
    Case("broadcast_to", [Fl((3, 1))], lambda x: x.expand(2, 3, 4), {"shape": [2, 3, 4]}),
    Case("concat", [[Fl((2, 3)), Fl((2, 1)), Fl((2, 2))]], lambda xs: torch.cat(xs, 1), {"axis": 1}),
    Case("slice", [Fl((5, 6))], lambda x: t_slice(x, [0, 1], [1, 0], [4, 5]),
         {"axes": [0, 1], "starts": [1, 0], "ends": [4, 5]}),
    Case("slice", [Fl((7, 6))], lambda x: t_slice(x, [0, 1], [1, -1], [7, 0], [3, -2]),
         {"axes": [0, 1], "starts": [1, -1], "ends": [7, 0], "steps": [3, -2]}, "steps"),
    Case("slice", [Fl((5, 3))], lambda x: t_slice(x, [0], [4], [-6], [-1]),
         {"axes": [0], "starts": [4], "ends": [-6], "steps": [-1]}, "reverse"),
    Case("split", [Fl((5, 3))], lambda x: torch.split(x, [2, 3], 0), {"sizes": [2, 3]}),
    Case("pad", [Fl((3, 4))], lambda x: t_pad(x, [[1, 2], [0, 3]], value=0.5),
         {"pads": [[1, 2], [0, 3]], "value": 0.5}),
    Case("pad", [Fl((4, 5))], lambda x: t_pad(x, [[2, 1], [3, 2]], "reflect"),
         {"pads": [[2, 1], [3, 2]], "mode": "reflect"}, "reflect"),
    Case("pad", [Fl((3, 4))], lambda x: t_pad(x, [[2, 3], [1, 0]], "replicate"),
         {"pads": [[2, 3], [1, 0]], "mode": "replicate"}, "replicate"),
    Case("gather", [Fl((5, 3)), In((2, 4), -5, 5)], lambda x, i: t_gather(x, i, 0)),
    Case("gather", [Fl((2, 5, 3)), In((4,), 0, 5)], lambda x, i: t_gather(x, i, 1), {"axis": 1}, "axis1"),
    Case("take_along_axis", [Fl((3, 5)), In((3, 4), 0, 5)], lambda x, i: torch.take_along_dim(x, i, 1)),
    Case("take_along_axis", [Fl((1, 5)), In((3, 2), 0, 5)], lambda x, i: torch.take_along_dim(x, i, 1),
         id="broadcast"),
    Case("embedding", [In((2, 5), 0, 4), Fl((4, 3))], lambda i, w: F.embedding(i, w)),
    Case("repeat_interleave", [Fl((2, 3))], lambda x: x.repeat_interleave(2, 1), {"repeats": 2, "axis": 1}),
    # collectives, single-process meaning (world 1); tests/distributed runs them on two ranks
    Case("all_reduce", [Fl((2, 3))], lambda x: x.clone(), {"world": 1, "reduce": "mean"}, vmap=False),
    Case("all_gather", [Fl((2, 3))], lambda x: x.clone(), {"world": 1, "axis": 1}, vmap=False),
    Case("reduce_scatter", [Fl((2, 4))], lambda x: x.clone(), {"world": 1, "axis": -1}, vmap=False),
    # norms
    Case("layer_norm", [Fl((2, 3, 5)), Fl((5,)), Fl((5,))], lambda x, w, b: F.layer_norm(x, (5,), w, b, 1e-5)),
    Case("layer_norm", [Fl((3, 5))], lambda x: F.layer_norm(x, (5,), eps=1e-3), {"eps": 1e-3}, "plain"),
    Case("rms_norm", [Fl((2, 3, 5)), Fl((5,))], lambda x, w: F.rms_norm(x, (5,), w, 1e-6)),
    Case("rms_norm", [Fl((3, 5)), Fl((5,))], lambda x, w: F.rms_norm(x, (5,), 1 + w, 1e-6),
         {"add_unit_offset": True}, "unit_offset"),
    Case("rms_norm", [Fl((3, 5))], lambda x: F.rms_norm(x, (5,), eps=1e-6), id="plain"),
    Case("group_norm", [Fl((2, 4, 3, 2)), Fl((4,)), Fl((4,))], lambda x, w, b: F.group_norm(x, 2, w, b, 1e-5),
         {"num_groups": 2}),
    Case("group_norm", [Fl((2, 6, 3))], lambda x: F.group_norm(x, 3, eps=1e-5), {"num_groups": 3}, "plain"),
    # attention
    Case("attention", [Fl((2, 2, 3, 4)), Fl((2, 2, 5, 4)), Fl((2, 2, 5, 3))], t_attention),
    Case("attention", [Fl((1, 4, 4, 4)), Fl((1, 2, 4, 4)), Fl((1, 2, 4, 4))],
         lambda q, k, v: t_attention(q, k, v, causal=True), {"causal": True}, "causal_gqa"),
    Case("attention", [Fl((1, 2, 3, 4)), Fl((1, 2, 5, 4)), Fl((1, 2, 5, 4)), Bo((1, 1, 3, 5))],
         lambda q, k, v, m: t_attention(q, k, v, m, window=3, scale=0.4),
         {"window": 3, "scale": 0.4}, "bool_mask_window",
         make=lambda rng, dt: [rng.standard_normal((1, 2, 3, 4)).astype(dt), rng.standard_normal((1, 2, 5, 4)).astype(dt),
                               rng.standard_normal((1, 2, 5, 4)).astype(dt),
                               (rng.random((1, 1, 3, 5)) < 0.6) | np.eye(3, 5, dtype=bool)]),
    Case("attention", [Fl((2, 2, 3, 4)), Fl((2, 2, 3, 4)), Fl((2, 2, 3, 4)), Fl((2, 1, 3, 3))],
         lambda q, k, v, m: t_attention(q, k, v, m, causal=True, softcap=2.0),
         {"causal": True, "softcap": 2.0}, "float_mask_softcap"),
    Case("rope", [Fl((2, 2, 3, 6)), Fl((1, 3, 2)), Fl((1, 3, 2))], t_rope),
    Case("rope", [Fl((2, 2, 3, 4)), Fl((2, 3, 2)), Fl((2, 3, 2))], lambda x, c, s: t_rope(x, c, s, "interleaved"),
         {"layout": "interleaved"}, "interleaved"),
    # backward-pass ops
    Case("index_add", [In((2, 3), -4, 4), Fl((5, 2, 3, 2))], lambda i, s: t_index_add(i, s, 1, 4),
         {"axis": 1, "size": 4}),
    Case("scatter_add", [In((3, 1), 0, 4), Fl((3, 2))], lambda i, s: t_scatter_add(i, s, 0, 4),
         {"axis": 0, "size": 4}),
    Case("attention_lse", [Fl((1, 4, 3, 4)), Fl((1, 2, 5, 4)), Fl((1, 2, 5, 4))],
         lambda q, k, v: t_attention_lse(q, k, v, causal=True), {"causal": True}),
    Case("attention_backward", [None] * 8,
         lambda *a: t_attention_backward(*a), {}, make=make_attention_backward((1, 2, 2, 3, 4, 4))),
    Case("attention_backward", [None] * 8,
         lambda *a: t_attention_backward(*a, mask_grad=True, causal=True, softcap=3.0),
         {"mask_grad": True, "causal": True, "softcap": 3.0}, "gqa_mask_softcap",
         make=make_attention_backward((1, 4, 2, 3, 3, 4), "float", causal=True, softcap=3.0)),
    Case("softmax_cross_entropy", [None] * 2, t_softmax_cross_entropy, make=make_cross_entropy((2, 3, 5))),
    Case("softmax_cross_entropy", [None] * 2, lambda x, y: t_softmax_cross_entropy(x, y, 2, 0.2),
         {"ignore_index": 2, "label_smoothing": 0.2}, "smoothing", make=make_cross_entropy((4, 6), 2)),
    Case("softmax_cross_entropy_backward", [None] * 5, t_softmax_cross_entropy_backward,
         make=make_cross_entropy((2, 3, 5), backward=True, dlse=False)),
    Case("softmax_cross_entropy_backward", [None] * 5, lambda *a: t_softmax_cross_entropy_backward(*a, 1, 0.3),
         {"ignore_index": 1, "label_smoothing": 0.3}, "smoothing_dlse",
         make=make_cross_entropy((4, 6), 1, backward=True)),
    Case("rms_norm_backward", [Fl((2, 3, 5)), Fl((5,)), Fl((2, 3, 5))],
         lambda x, w, dy: t_rms_norm_backward(x, w, dy, weight_grad=True), {"weight_grad": True}),
    Case("rms_norm_backward", [Fl((3, 5)), Fl((5,)), Fl((3, 5))],
         lambda x, w, dy: t_rms_norm_backward(x, w, dy, 1e-5, True), {"eps": 1e-5, "add_unit_offset": True},
         "unit_offset_dx_only"),
    Case("rms_norm_backward", [Fl((3, 5)), None, Fl((3, 5))], t_rms_norm_backward, {}, "plain"),
    # fused
    Case("fused_linear", [Fl((2, 3, 4)), Fl((5, 4)), Fl((5,)), Fl((2, 3, 5)), Fl((4,))],
         lambda x, w, b, r, nw: t_fused_linear(x, w, b, r, nw, norm="rms_norm", activation="silu", eps=1e-6),
         {"norm": "rms_norm", "activation": "silu", "eps": 1e-6}),
    Case("fused_linear", [Fl((3, 4)), Fl((5, 4)), None, None, Fl((4,)), Fl((4,))],
         lambda x, w, b, r, nw, nb: t_fused_linear(x, w, None, None, nw, nb, norm="layer_norm",
                                                   activation="gelu_tanh"),
         {"norm": "layer_norm", "activation": "gelu_tanh"}, "layer_norm_gelu"),
    # convolution, pooling, resampling
    Case("conv1d", [Fl((2, 4, 7)), Fl((6, 2, 3)), Fl((6,))],
         lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2),
         {"stride": 2, "padding": 1, "dilation": 2, "groups": 2}),
    Case("conv2d", [Fl((2, 3, 6, 5)), Fl((4, 3, 3, 2)), Fl((4,))],
         lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0)), {"stride": [2, 1], "padding": [1, 0]}),
    Case("conv2d", [Fl((1, 2, 5, 4)), Fl((3, 2, 2, 2))], lambda x, w: F.conv2d(x, w, padding="same"),
         {"padding": "same"}, "same_even_kernel"),
    Case("conv2d", [Fl((1, 2, 6, 5)), Fl((2, 2, 3, 3))],
         lambda x, w: t_conv_pairs(F.conv2d, [(2, 0), (1, 3)])(x, w, stride=2),
         {"padding": [[2, 0], [1, 3]], "stride": 2}, "asymmetric_pads"),
    Case("conv3d", [Fl((1, 2, 4, 5, 4)), Fl((2, 1, 2, 3, 2)), Fl((2,))],
         lambda x, w, b: F.conv3d(x, w, b, padding=1, groups=2), {"padding": 1, "groups": 2}),
    Case("conv_transpose1d", [Fl((2, 4, 5)), Fl((4, 3, 3)), Fl((3,))],
         lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1),
         {"stride": 2, "padding": 1, "output_padding": 1}),
    Case("conv_transpose2d", [Fl((1, 4, 3, 4)), Fl((4, 1, 3, 3)), Fl((2,))],
         lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, dilation=2, groups=2),
         {"stride": 2, "padding": 1, "output_padding": 1, "dilation": 2, "groups": 2}),
    Case("conv_transpose2d", [Fl((1, 2, 4, 3)), Fl((2, 3, 2, 3))],
         lambda x, w: F.conv_transpose2d(x, w, stride=1, padding=1, output_padding=1, dilation=2),
         {"stride": 1, "padding": 1, "output_padding": 1, "dilation": 2}, "out_pad_past_stride"),
    Case("conv_transpose3d", [Fl((1, 2, 3, 2, 3)), Fl((2, 2, 2, 2, 2))],
         lambda x, w: F.conv_transpose3d(x, w, stride=2), {"stride": 2}),
    Case("max_pool1d", [Fl((2, 3, 9))], lambda x: F.max_pool1d(x, 3, 2, 1), {"kernel_size": 3, "stride": 2, "padding": 1}),
    Case("max_pool2d", [Fl((2, 2, 7, 6))],
         lambda x: F.max_pool2d(x, (3, 2), 2, (1, 0), dilation=(1, 2), ceil_mode=True),
         {"kernel_size": [3, 2], "stride": 2, "padding": [1, 0], "dilation": [1, 2], "ceil_mode": True}),
    Case("max_pool3d", [Fl((1, 2, 4, 5, 4))], lambda x: F.max_pool3d(x, 2), {"kernel_size": 2}),
    Case("avg_pool1d", [Fl((2, 3, 9))],
         lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
         {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}),
    Case("avg_pool2d", [Fl((2, 2, 7, 6))], lambda x: F.avg_pool2d(x, (3, 2), 2, 1, ceil_mode=True),
         {"kernel_size": [3, 2], "stride": 2, "padding": 1, "ceil_mode": True}),
    Case("avg_pool3d", [Fl((1, 2, 4, 5, 4))], lambda x: F.avg_pool3d(x, 2, divisor_override=3),
         {"kernel_size": 2, "divisor_override": 3}),
    Case("adaptive_avg_pool1d", [Fl((2, 3, 7))], lambda x: F.adaptive_avg_pool1d(x, 3), {"output_size": 3}),
    Case("adaptive_avg_pool2d", [Fl((2, 2, 7, 5))], lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
         {"output_size": [3, 2]}),
    Case("adaptive_avg_pool3d", [Fl((1, 2, 5, 4, 3))], lambda x: F.adaptive_avg_pool3d(x, (2, 3, 2)),
         {"output_size": [2, 3, 2]}),
    Case("interpolate", [Fl((1, 2, 3, 4))], lambda x: F.interpolate(x, scale_factor=2.0),
         {"scale_factor": 2.0}, "nearest"),
    Case("interpolate", [Fl((1, 2, 4, 3))], lambda x: F.interpolate(x, size=(7, 5), mode="bilinear"),
         {"size": [7, 5], "mode": "bilinear"}, "bilinear"),
    Case("interpolate", [Fl((2, 2, 5))], lambda x: F.interpolate(x, size=8, mode="linear", align_corners=True),
         {"size": [8], "mode": "linear", "align_corners": True}, "linear_align"),
    Case("interpolate", [Fl((1, 1, 2, 3, 2))], lambda x: F.interpolate(x, scale_factor=1.5, mode="trilinear"),
         {"scale_factor": 1.5, "mode": "trilinear"}, "trilinear"),
    Case("interpolate", [Fl((1, 2, 5, 3))], lambda x: F.interpolate(x, size=(3, 7), mode="nearest-exact"),
         {"size": [3, 7], "mode": "nearest-exact"}, "nearest_exact"),
    Case("interpolate_backward", [Fl((1, 2, 7, 5))],
         lambda dy: t_interpolate_backward(dy, (4, 3), size=(7, 5), mode="bilinear"),
         {"input_size": [4, 3], "size": [7, 5], "mode": "bilinear"}),
    Case("interpolate_backward", [Fl((1, 2, 6))],
         lambda dy: t_interpolate_backward(dy, (4,), scale_factor=1.5),
         {"input_size": [4], "scale_factor": 1.5}, "nearest"),
    Case("pixel_shuffle", [Fl((1, 8, 2, 3))], lambda x: F.pixel_shuffle(x, 2), {"upscale_factor": 2}),
    Case("pixel_unshuffle", [Fl((2, 1, 2, 4, 6))], lambda x: F.pixel_unshuffle(x, 2), {"downscale_factor": 2}),
]
