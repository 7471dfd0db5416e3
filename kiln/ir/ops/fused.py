"""Fused ops the optimizer produces: a matmul with its norm prologue and activation/residual epilogue.

Why: one kernel launch reads x once, normalizes it on the fly, multiplies and applies
bias, activation and the residual add before writing, instead of four round trips
through memory. The math is exactly the composition of the primitive ops.
"""

from __future__ import annotations

from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ..shapes import broadcast_shapes
from ._rules import expect_float, expect_rank, expect_same_dtype, expect_shape, tt

LINEAR_ACTIVATIONS = ("none", "silu", "gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh")
# gated activations: the matmul output [.., 2n] splits into gate [.., :n] and up [.., n:]
GATED_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")
LINEAR_NORMS = ("none", "rms_norm", "layer_norm")


def _fused_linear(types, attrs):
    x, w, b, r, nw, nb = types
    op = "fused_linear"
    expect_float(op, "x", x)
    expect_rank(op, "weight", w, 2)
    expect_same_dtype(op, {"x": x, "weight": w, "bias": b, "residual": r,
                           "norm_weight": nw, "norm_bias": nb})
    if attrs["activation"] not in LINEAR_ACTIVATIONS:
        raise GraphError(f"op {op!r}: activation {attrs['activation']!r} is not one of {LINEAR_ACTIVATIONS}")
    norm = attrs["norm"]
    if norm not in LINEAR_NORMS:
        raise GraphError(f"op {op!r}: norm {norm!r} is not one of {LINEAR_NORMS}")
    if norm == "none" and (nw is not None or nb is not None):
        raise GraphError(f"op {op!r}: norm_weight/norm_bias given but norm is 'none'")
    if norm == "rms_norm" and nb is not None:
        raise GraphError(f"op {op!r}: rms_norm takes no norm_bias")
    for name, p in (("norm_weight", nw), ("norm_bias", nb)):
        if p is not None:
            expect_shape(op, name, p, (x.shape[-1],))
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise GraphError(f"op {op!r}: x {x} has {x.shape[-1] if x.rank else 'no'} features, "
                         f"weight {w} expects {w.shape[1]} (weight is [out, in])")
    if b is not None:
        expect_shape(op, "bias", b, (w.shape[0],))
    n = w.shape[0]
    if attrs["activation"] in GATED_ACTIVATIONS:
        if n % 2:
            raise GraphError(f"op {op!r}: gated activation {attrs['activation']!r} needs an even number of "
                             f"output features, weight {w} has {n}")
        n //= 2
    out = tt(x.shape[:-1] + (n,), x.dtype)
    if r is not None:
        try:
            ok = broadcast_shapes(r.shape, out.shape) == out.shape
        except GraphError:
            ok = False
        if not ok:
            raise GraphError(f"op {op!r}: residual {r} must broadcast to the output shape {out.shape}")
    return out


register_op(OpSpec(
    "fused_linear", "matmul", ("x", "weight", "bias?", "residual?", "norm_weight?", "norm_bias?"),
    _fused_linear,
    attrs={"activation": "none", "norm": "none", "eps": 1e-5, "add_unit_offset": False},
    doc="act(norm(x) @ weight^T + bias) + residual; norm is rms_norm (weight, eps, add_unit_offset) "
        "or layer_norm (weight, bias, eps) over the last axis of x, or none. A gated activation "
        "(swiglu, geglu) splits the product into gate and up halves: act(gate) * up."))
