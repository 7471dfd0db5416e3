"""Kernels that write straight into a step's arena slot (`out=`), for the Plan executor.

A builder looks at one step once, when the executor binds its plan: dtypes and shapes,
which inputs share the output's bytes, and the arrays already known before any run
(parameters, constants, load-time results). It returns the callable that computes the step
into its slot, or None to let the executor fall back to the reference kernel plus one copy.
Half-precision steps take that fallback (the reference kernels upcast them).

They compute the reference kernels' operations in the same order, so most match them bit
for bit. Three match to rounding instead: matmuls against a weight stored pre-transposed
(transposed_weights.py), grouped-query attention, which multiplies each KV head's query
group as one GEMM instead of repeating K and V per query head, and float32 erf-gelu, whose
erf is a vectorized approximation (within float32 rounding) instead of scipy's scalar loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kiln.compile.strides import reshape_strides
from kiln.ir import TensorType
from kiln.ir.ops.fused import GATED_ACTIVATIONS

from .kernels.attention import attention_bias
from .kernels.elementwise import sigmoid_into
from .kernels.elementwise import scipy_erf
from .transposed_weights import TRANSPOSED

Kernel = Callable[..., None]

_UFUNC2 = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power,
           "maximum": np.maximum, "minimum": np.minimum, "equal": np.equal, "not_equal": np.not_equal,
           "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
           "greater_equal": np.greater_equal, "logical_and": np.logical_and, "logical_or": np.logical_or}
_UFUNC1 = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
           "neg": np.negative, "abs": np.abs, "erf": scipy_erf, "logical_not": np.logical_not}
_HALF = ("float16", "bfloat16")




@dataclass
class StepBinding:
    """What a builder may look at: the step, its slot, its input types and the inputs known now."""

    op: str
    attrs: dict
    out: np.ndarray
    types: list            # per input: TensorType, list[TensorType] (variadic) or None (absent)
    fixed: list            # per input: the array object when known before runs (slots, params, ...), else None
    const: list            # per input: the array when its values are known before runs (params, constants,
                           # load-time results; not arena slots, which runs rewrite), else None
    scratch: Callable[[str, tuple, np.dtype], np.ndarray]  # a buffer shared by steps, by (role, shape, dtype)

    def wide(self) -> bool:
        """True when no input or output is half precision (those take the upcasting reference)."""
        types = [t for x in self.types for t in (x if isinstance(x, list) else [x]) if t is not None]
        return self.out.dtype.name not in _HALF and all(t.dtype.name not in _HALF for t in types)

    def aliased(self, i: int) -> bool:
        """True when input i is known to share bytes with the output (an in-place step)."""
        a = self.fixed[i]
        return isinstance(a, np.ndarray) and np.may_share_memory(a, self.out)

    def any_aliased(self) -> bool:
        return any(self.aliased(i) for i in range(len(self.fixed)))


def _dt(t: TensorType) -> np.dtype:
    return t.dtype.np_dtype


# ---- pointwise -------------------------------------------------------------------------------

def _ufunc_ok(ufunc, b: StepBinding) -> bool:
    try:
        res = ufunc.resolve_dtypes(tuple(_dt(t) for t in b.types) + (None,) * ufunc.nout)
    except (TypeError, ValueError, np.exceptions.DTypePromotionError):
        return False
    return res[-1] == b.out.dtype


def _binary(ufunc):
    def build(b: StepBinding):
        if not b.wide() or not _ufunc_ok(ufunc, b):
            return None
        out = b.out
        return lambda x, y: ufunc(x, y, out=out)
    return build


def _unary(ufunc):
    def build(b: StepBinding):
        f = ufunc() if ufunc is scipy_erf else ufunc   # scipy is imported when an erf is bound
        if not b.wide() or not _ufunc_ok(f, b):
            return None
        out = b.out
        return lambda x: f(x, out=out)
    return build


def _build_rsqrt(b: StepBinding):
    if not b.wide():
        return None
    out = b.out

    def run(x):
        np.sqrt(x, out=out)
        np.true_divide(1.0, out, out=out)
    return run


def _build_relu(b: StepBinding):
    if not b.wide():
        return None
    out, zero = b.out, np.zeros((), b.out.dtype)
    return lambda x: np.maximum(x, zero, out=out)


def _silu_into(x, out, tmp):
    sigmoid_into(x, tmp)
    np.multiply(x, tmp, out=out)


# Abramowitz & Stegun 7.1.26: erfc(a) ~ t (a1 + t (a2 + ... a5 t)) exp(-a^2), t = 1 / (1 + p a), a >= 0,
# absolute error under 1.5e-7 (float32's own rounding) in ~20 vectorized passes, where scipy's
# erf is a scalar loop about 6x slower. Only for float32: float64 keeps scipy's erf.
_AS_P = np.float32(0.3275911)
_AS_A = tuple(np.float32(c) for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_ONE = np.float32(1)
_A_MAX = np.float32(10)


def _one_plus_erf_f32(x, scale, out, t, poly):
    """1 + erf(x * scale) into out, for float32 x; t and poly are scratch arrays of x's shape."""
    np.abs(x, out=out)
    np.multiply(out, scale, out=out)
    np.minimum(out, _A_MAX, out=out)          # a = |x| * scale; erfc(10) underflows float32 anyway
    np.multiply(out, _AS_P, out=t)
    np.add(t, _ONE, out=t)
    np.true_divide(_ONE, t, out=t)           # t = 1 / (1 + p a)
    np.multiply(t, _AS_A[4], out=poly)
    for c in _AS_A[3::-1]:
        np.add(poly, c, out=poly)
        np.multiply(poly, t, out=poly)
    np.square(out, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.multiply(poly, out, out=poly)         # erfc(a)
    np.subtract(_ONE, poly, out=out)         # erf(a)
    np.copysign(out, x, out=out)             # erf(x * scale): erf is odd
    np.add(out, _ONE, out=out)


def _gelu_into(x, out, tmps, approximate: str):
    """gelu(x) into out (which may be x); tmps: three scratch arrays of x's shape, none of them x or out.
    The reference's ops and order, with float32 erf by the approximation above."""
    dt = x.dtype.type
    tmp = tmps[0]
    if approximate == "tanh":
        np.multiply(x, 0.044715, out=tmp)
        np.multiply(tmp, x, out=tmp)
        np.multiply(tmp, x, out=tmp)
        np.add(x, tmp, out=tmp)
        np.multiply(dt(math.sqrt(2.0 / math.pi)), tmp, out=tmp)
        np.tanh(tmp, out=tmp)
        np.add(tmp, 1.0, out=tmp)
    elif x.dtype == np.float32:
        _one_plus_erf_f32(x, np.float32(1 / math.sqrt(2.0)), tmp, tmps[1], tmps[2])
    else:
        np.true_divide(x, dt(math.sqrt(2.0)), out=tmp)
        scipy_erf()(tmp, out=tmp)
        np.add(tmp, 1.0, out=tmp)
    np.multiply(x, 0.5, out=out)
    np.multiply(out, tmp, out=out)


def _build_sigmoid(b: StepBinding):
    if not b.wide():
        return None
    out = b.out
    return lambda x: sigmoid_into(x, out)


def _build_silu(b: StepBinding):
    if not b.wide():
        return None
    out = b.out
    tmp = b.scratch("silu", out.shape, out.dtype)
    return lambda x: _silu_into(x, out, tmp)


def _build_gelu(b: StepBinding):
    if not b.wide() or b.attrs.get("approximate", "none") not in ("none", "tanh"):
        return None
    out, approx = b.out, b.attrs.get("approximate", "none")
    tmps = [b.scratch(f"gelu{i}", out.shape, out.dtype) for i in range(3)]
    return lambda x: _gelu_into(x, out, tmps, approx)


def _build_swiglu(b: StepBinding):
    if not b.wide() or tuple(b.types[0].shape) != b.out.shape or tuple(b.types[1].shape) != b.out.shape:
        return None
    out = b.out
    tmp = b.scratch("swiglu", out.shape, out.dtype)

    def run(gate, up):
        _silu_into(gate, tmp, tmp)      # gate * sigmoid(gate), then * up: the reference's order
        np.multiply(tmp, up, out=out)
    return run


def _build_where(b: StepBinding):
    if not b.wide() or b.aliased(0) or b.types[1].dtype != b.types[2].dtype or _dt(b.types[1]) != b.out.dtype:
        return None
    out, b_in_place = b.out, b.aliased(2)
    if b.aliased(1):   # the output holds x already (in place): fill in y where cond is false
        if b.types[1].shape != tuple(out.shape):
            return None
        return lambda cond, x, y: np.copyto(out, y, where=np.logical_not(cond))
    c_shape = (1,) * (out.ndim - len(b.types[0].shape)) + tuple(b.types[0].shape)
    varying = [i for i, n in enumerate(c_shape) if n != 1]
    if len(varying) == 1:
        # cond selects along one axis (e.g. the slot a KV-cache write fills): copy the chosen
        # slices by index instead of a masked copy, which NumPy runs ~30x slower than a plain copy
        axis = varying[0]
        lead = (slice(None),) * axis

        def run(cond, x, y):
            if not b_in_place:
                np.copyto(out, y)
            picked = (*lead, np.flatnonzero(cond))
            out[picked] = np.broadcast_to(x, out.shape)[picked]
        return run

    def run(cond, x, y):
        if not b_in_place:
            np.copyto(out, y)
        np.copyto(out, x, where=cond)
    return run


def _build_cast(b: StepBinding):
    if not b.wide():
        return None
    out = b.out
    return lambda x: np.copyto(out, x, casting="unsafe")


# ---- matmul family ------------------------------------------------------------------------------

def _t(a, flag):
    return np.swapaxes(a, -1, -2) if flag else a


def _build_matmul(b: StepBinding):
    if not b.wide():
        return None
    out = b.out
    ta, tb = b.attrs.get("transpose_a", False), b.attrs.get("transpose_b", False)
    w = b.const[1]
    if w is not None and w.ndim == 2 and not _t(w, tb).flags.c_contiguous:
        wt = TRANSPOSED.get(w) if tb and w.flags.c_contiguous else np.ascontiguousarray(_t(w, tb))
        return lambda x, _w: np.matmul(_t(x, ta), wt, out=out)
    return lambda x, y: np.matmul(_t(x, ta), _t(y, tb), out=out)


def _rms_norm_into(x, w, eps, unit_offset, out):
    """The reference rms_norm's ops, written into out (x's shape)."""
    np.square(x, out=out)
    d = out.mean(-1, keepdims=True)
    np.add(d, eps, out=d)
    np.sqrt(d, out=d)
    np.true_divide(x, d, out=out)
    if w is not None:
        np.multiply(out, 1 + w if unit_offset else w, out=out)


def _layer_norm_into(x, w, bias, eps, out, tmp):
    """The reference layer_norm's ops, written into out; tmp is a scratch of x's shape."""
    mu = x.mean(-1, keepdims=True)
    np.subtract(x, mu, out=out)
    np.square(out, out=tmp)
    var = tmp.mean(-1, keepdims=True)
    np.add(var, eps, out=var)
    np.sqrt(var, out=var)
    np.true_divide(out, var, out=out)
    if w is not None:
        np.multiply(out, w, out=out)
    if bias is not None:
        np.add(out, bias, out=out)


def _build_linear(b: StepBinding):
    """linear and fused_linear: norm prologue into a scratch, one GEMM over all rows, epilogue in place."""
    if not b.wide():
        return None
    a = b.attrs
    activation, norm = a.get("activation", "none"), a.get("norm", "none")
    if activation not in ("none", "silu", "gelu", "gelu_tanh", "relu") + GATED_ACTIVATIONS \
            or norm not in ("none", "rms_norm", "layer_norm"):
        return None
    residual_t = b.types[3] if len(b.types) > 3 else None
    if b.aliased(0) or (residual_t is not None and b.aliased(3) and activation in GATED_ACTIVATIONS):
        return None
    out, x_t, w_t = b.out, b.types[0], b.types[1]
    dt = out.dtype
    k, n = w_t.shape[1], w_t.shape[0]
    rows = math.prod(x_t.shape[:-1])
    out2 = out.reshape(rows, out.shape[-1])
    gated = activation in GATED_ACTIVATIONS
    y = b.scratch("linear.gated", (rows, n), dt) if gated else out2
    act_shape = (rows, n // 2 if gated else n)
    act = [b.scratch(f"linear.act{i}", act_shape, dt) for i in range(3)] if activation not in ("none", "relu") \
        else None
    xn = b.scratch("linear.norm", (rows, k), dt) if norm != "none" else None
    ln_tmp = b.scratch("linear.norm_tmp", (rows, k), dt) if norm == "layer_norm" else None
    eps = np.asarray(a.get("eps", 1e-5), dt)
    unit_offset = a.get("add_unit_offset", False)
    wt = TRANSPOSED.get(b.const[1]) if b.const[1] is not None else None
    zero = np.zeros((), dt)
    half = n // 2

    def run(x, weight, bias=None, residual=None, norm_weight=None, norm_bias=None):
        x2 = x.reshape(rows, k)
        if norm == "rms_norm":
            _rms_norm_into(x2, norm_weight, eps, unit_offset, xn)
            x2 = xn
        elif norm == "layer_norm":
            _layer_norm_into(x2, norm_weight, norm_bias, eps, xn, ln_tmp)
            x2 = xn
        np.matmul(x2, wt if wt is not None else weight.T, out=y)
        if bias is not None:
            np.add(y, bias, out=y)
        if activation == "relu":
            np.maximum(y, zero, out=y)
        elif activation == "silu":
            _silu_into(y, y, act[0])
        elif activation in ("gelu", "gelu_tanh"):
            _gelu_into(y, y, act, "tanh" if activation == "gelu_tanh" else "none")
        elif gated:
            gate, up = y[:, :half], y[:, half:]
            if activation == "swiglu":
                _silu_into(gate, act[0], act[0])
            else:
                _gelu_into(gate, act[0], (out2, act[1], act[2]), "tanh" if activation == "geglu_tanh" else "none")
            np.multiply(act[0], up, out=out2)
        if residual is not None:
            np.add(out, residual, out=out)
    return run


# ---- normalization and softmax --------------------------------------------------------------------

def _build_rms_norm(b: StepBinding):
    if not b.wide() or b.aliased(0):
        return None
    out, eps = b.out, np.asarray(b.attrs.get("eps", 1e-6), b.out.dtype)
    unit_offset = b.attrs.get("add_unit_offset", False)
    return lambda x, weight=None: _rms_norm_into(x, weight, eps, unit_offset, out)


def _build_layer_norm(b: StepBinding):
    if not b.wide() or b.aliased(0):
        return None
    out, eps = b.out, np.asarray(b.attrs.get("eps", 1e-5), b.out.dtype)
    tmp = b.scratch("layer_norm", out.shape, out.dtype)
    return lambda x, weight=None, bias=None: _layer_norm_into(x, weight, bias, eps, out, tmp)


def _softmax_inplace(s, axis=-1):
    m = np.max(s, axis=axis, keepdims=True)
    np.copyto(m, 0, where=~np.isfinite(m))
    np.subtract(s, m, out=s)
    np.exp(s, out=s)
    np.true_divide(s, np.sum(s, axis=axis, keepdims=True), out=s)


def _build_softmax(b: StepBinding):
    if not b.wide():
        return None
    out, axis = b.out, b.attrs.get("axis", -1)

    def run(x):
        if x is not out:
            np.copyto(out, x)
        _softmax_inplace(out, axis)
    return run


# ---- attention ----------------------------------------------------------------------------------------

def _build_attention(b: StepBinding):
    """Scores [B, Hkv, group*Sq, Sk] in a scratch: one GEMM per KV head and no repeated K/V for GQA.

    Masks are applied as additive 0/-inf biases (a masked copy is ~30x slower than an add in
    NumPy); on finite scores that is exactly the reference's `where(mask, s, -inf)`.
    """
    if not b.wide() or b.any_aliased():
        return None
    q_t, k_t, v_t, m_t = b.types
    bsz, hq, sq, d = q_t.shape
    hk, sk, dv = k_t.shape[1], k_t.shape[2], v_t.shape[3]
    g = hq // hk
    a, out = b.attrs, b.out
    dt = out.dtype
    scale = np.asarray(d ** -0.5 if a.get("scale") is None else a["scale"], dt)
    softcap = a.get("softcap")
    s = b.scratch("attention.scores", (bsz, hk, g * sq, sk), dt)
    s5 = s.reshape(bsz, hk, g, sq, sk)
    # a slot stored permuted (the Plan's layouts): multiply into a scratch, then one strided copy
    direct = out.flags.c_contiguous
    out4 = out.reshape(bsz, hk, g * sq, dv) if direct else b.scratch("attention.out", (bsz, hk, g * sq, dv), dt)
    allowed = attention_bias(sq, sk, a.get("causal", False), a.get("window"))
    blocked = None if allowed is None else np.where(allowed, 0, -np.inf).astype(dt)
    mask5 = None
    if m_t is not None:
        m4 = (1,) * (4 - len(m_t.shape)) + tuple(m_t.shape)
        mask5 = (m4[0], 1, 1, m4[2], m4[3]) if m4[1] == 1 else (m4[0], hk, g, m4[2], m4[3])
        bool_mask = m_t.dtype.name == "bool"
        minus_inf = np.asarray(-np.inf, dt)
        zero = np.zeros((), dt)

    def run(q, k, v, mask=None):
        np.matmul(q.reshape(bsz, hk, g * sq, d), np.swapaxes(k, -1, -2), out=s)
        np.multiply(s, scale, out=s)
        if softcap is not None:
            np.true_divide(s, softcap, out=s)
            np.tanh(s, out=s)
            np.multiply(s, softcap, out=s)
        if mask is not None:
            m = mask.reshape(mask5)
            np.add(s5, np.where(m, zero, minus_inf) if bool_mask else m, out=s5)
        if blocked is not None:
            np.add(s5, blocked, out=s5)
        _attention_softmax(s)
        np.matmul(s, v, out=out4)
        if not direct:
            np.copyto(out, out4.reshape(out.shape))
    return run


def _attention_softmax(s):
    """Softmax over the last axis in place; rows that attend to nothing (all -inf or NaN) become 0."""
    m = np.max(s, axis=-1, keepdims=True)
    np.copyto(m, 0, where=~np.isfinite(m))
    np.subtract(s, m, out=s)
    np.exp(s, out=s)
    z = np.sum(s, axis=-1, keepdims=True)
    z[z == 0] = 1                   # a fully masked row: 0 / 1 = 0, as the reference's 0/0 -> 0
    np.true_divide(s, z, out=s)
    if np.isnan(z).any():           # NaN scores: the reference zeroes every NaN probability
        np.copyto(s, 0.0, where=np.isnan(s))


def _build_rope(b: StepBinding):
    if not b.wide() or b.any_aliased():
        return None
    out = b.out
    rot = 2 * b.types[1].shape[-1]
    half = rot // 2
    tmp = b.scratch("rope", out.shape[:-1] + (half,), out.dtype)
    interleaved = b.attrs.get("layout", "half") != "half"
    d = out.shape[-1]

    def run(x, cos, sin):
        c, s = cos[:, None], sin[:, None]
        if interleaved:
            x1, x2, o1, o2 = x[..., 0:rot:2], x[..., 1:rot:2], out[..., 0:rot:2], out[..., 1:rot:2]
        else:
            x1, x2, o1, o2 = x[..., :half], x[..., half:rot], out[..., :half], out[..., half:rot]
        np.multiply(x1, c, out=o1)
        np.multiply(x2, s, out=tmp)
        np.subtract(o1, tmp, out=o1)
        np.multiply(x2, c, out=o2)
        np.multiply(x1, s, out=tmp)
        np.add(o2, tmp, out=o2)
        if rot < d:
            np.copyto(out[..., rot:], x[..., rot:])
    return run


# ---- layout -----------------------------------------------------------------------------------------------

def _build_reshape(b: StepBinding):
    """Copies into a view of the slot in x's shape (the slot may be a concat's slice); never into
    a reshaped copy of it."""
    out, shape = b.out, b.types[0].shape
    strides = reshape_strides(out.shape, [st // out.itemsize for st in out.strides], shape)
    if strides is None:
        return None
    view = np.lib.stride_tricks.as_strided(out, shape, [st * out.itemsize for st in strides])
    return lambda x: np.copyto(view, x)


def _build_concat(b: StepBinding):
    """Copies the inputs not already computed into their slices of the slot (the Plan's `slices`)."""
    out, axis = b.out, b.attrs.get("axis", 0) % b.out.ndim
    fixed = b.fixed[0] if isinstance(b.fixed[0], list) else [None] * len(b.types[0])
    parts, start = [], 0
    for k, (t, a) in enumerate(zip(b.types[0], fixed)):
        n = t.shape[axis]
        if not (isinstance(a, np.ndarray) and np.may_share_memory(a, out)):
            index = [slice(None)] * out.ndim
            index[axis] = slice(start, start + n)
            parts.append((k, tuple(index)))
        start += n

    def run(xs):
        for k, index in parts:
            np.copyto(out[index], xs[k])
    return run


def _build_embedding(b: StepBinding):
    out = b.out
    rows = b.types[1].shape[0]
    from .kernels import KERNELS
    reference = KERNELS["embedding"]

    def run(ids, weight):
        if ids.size and (ids.min() < 0 or ids.max() >= rows):
            reference(ids, weight)  # raises the error that names the bad id
        np.take(weight, ids, axis=0, out=out)
    return run


def _build_argmax(b: StepBinding):
    out, axis, keepdims = b.out, b.attrs["axis"], b.attrs["keepdims"]
    if b.types[0].dtype.name in _HALF:
        return None
    return lambda x: np.argmax(x, axis=axis, out=out, keepdims=keepdims)


def _build_cache_write(b: StepBinding):
    """Writes only the new rows when the output is the cache itself (a state updated in place)."""
    from .kernels.layout import cache_rows
    out, axis, in_place = b.out, b.attrs["axis"], b.aliased(0)

    def run(cache, new, position):
        rows = cache_rows(cache.shape, new.shape, position, axis)
        if not in_place:
            np.copyto(out, cache)
        out[rows] = new
    return run


BUILDERS: dict[str, Callable[[StepBinding], Kernel | None]] = {name: _binary(f) for name, f in _UFUNC2.items()}
BUILDERS.update({name: _unary(f) for name, f in _UFUNC1.items()})
BUILDERS.update({
    "rsqrt": _build_rsqrt, "relu": _build_relu, "sigmoid": _build_sigmoid, "silu": _build_silu, "gelu": _build_gelu, "swiglu": _build_swiglu,
    "where": _build_where, "cast": _build_cast, "matmul": _build_matmul, "linear": _build_linear,
    "fused_linear": _build_linear, "rms_norm": _build_rms_norm, "layer_norm": _build_layer_norm,
    "softmax": _build_softmax, "attention": _build_attention, "rope": _build_rope, "reshape": _build_reshape,
    "concat": _build_concat, "embedding": _build_embedding, "cache_write": _build_cache_write,
    "argmax": _build_argmax,
})
