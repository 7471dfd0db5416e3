"""Normalizations over the last axis (layer_norm, rms_norm) and over channel groups (group_norm)."""

from __future__ import annotations

from ..errors import GraphError
from ..op_spec import REQUIRED, OpSpec, register_op
from ._rules import expect_float, expect_same_dtype, expect_shape


def _last_axis_norm(name):
    def infer(types, attrs):
        x, *params = types
        expect_float(name, "x", x)
        for pname, p in zip(("weight", "bias"), params):
            if p is not None:
                expect_shape(name, pname, p, (x.shape[-1],))
                expect_same_dtype(name, {"x": x, pname: p})
        return x
    return infer


register_op(OpSpec("layer_norm", "norm", ("x", "weight?", "bias?"), _last_axis_norm("layer_norm"),
                   attrs={"eps": 1e-5}))
register_op(OpSpec("rms_norm", "norm", ("x", "weight?"), _last_axis_norm("rms_norm"),
                   attrs={"eps": 1e-6, "add_unit_offset": False},
                   doc="x / rms(x) * w, or * (1 + w) with add_unit_offset (Gemma)"))


def _group_norm(types, attrs):
    x, w, b = types
    expect_float("group_norm", "x", x)
    if x.rank < 2:
        raise GraphError(f"op 'group_norm': x must be [N, C, ...], got {x}")
    c, g = x.shape[1], attrs["num_groups"]
    if g <= 0 or c % g:
        raise GraphError(f"op 'group_norm': {c} channels are not divisible into {g} groups")
    for pname, p in (("weight", w), ("bias", b)):
        if p is not None:
            expect_shape("group_norm", pname, p, (c,))
            expect_same_dtype("group_norm", {"x": x, pname: p})
    return x


register_op(OpSpec("group_norm", "norm", ("x", "weight?", "bias?"), _group_norm,
                   attrs={"num_groups": REQUIRED, "eps": 1e-5}))
