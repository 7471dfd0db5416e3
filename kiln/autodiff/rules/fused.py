"""fused_linear is differentiated through its decomposition into norm, linear, activation and add."""

from __future__ import annotations

from kiln.ir import Graph

from ..registry import decomposition


@decomposition("fused_linear")
def _fused_linear_decomposed(g: Graph, inputs, attrs):
    x, w, b, residual, nw, nb = inputs
    if attrs["norm"] == "rms_norm":
        x = g.rms_norm(x, nw, eps=attrs["eps"], add_unit_offset=attrs["add_unit_offset"])
    elif attrs["norm"] == "layer_norm":
        x = g.layer_norm(x, nw, nb, eps=attrs["eps"])
    y = g.linear(x, w, b)
    act = attrs["activation"]
    if act == "silu":
        y = g.silu(y)
    elif act == "relu":
        y = g.relu(y)
    elif act in ("gelu", "gelu_tanh"):
        y = g.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")
    if residual is not None:
        y = g.add(y, residual)
    return [y]
