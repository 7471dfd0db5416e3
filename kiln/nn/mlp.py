"""Feed-forward blocks: plain `down(act(up(x)))` or gated `down(act(gate(x)) * up(x))`, any activation.

A gated MLP fuses gate and up into one projection (`gate_up`, loaded as a concatenation)."""

from __future__ import annotations

from typing import Mapping

from kiln.ir import Graph, Value

from .linear import Linear
from .module import Module

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "tanh", "sigmoid")
NAMES = {"up": "up_proj", "gate_up": "gate_up_proj", "down": "down_proj"}
# HF config `hidden_act` / `activation_function` values -> ours
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu", "swish": "silu"}


def activation(g: Graph, x: Value, act: str) -> Value:
    if act == "gelu":
        return g.gelu(x, approximate="none")
    if act == "gelu_tanh":
        return g.gelu(x, approximate="tanh")
    if act not in ACTIVATIONS:
        raise ValueError(f"activation {act!r} is not one of {ACTIVATIONS}")
    return getattr(g, act)(x)


def gated_activation(g: Graph, gate: Value, up: Value, act: str) -> Value:
    """act(gate) * up, as the one fused op where there is one (swiglu, geglu)."""
    if act == "silu":
        return g.swiglu(gate, up)
    if act in ("gelu", "gelu_tanh"):
        return g.geglu(gate, up, approximate="tanh" if act == "gelu_tanh" else "none")
    return activation(g, gate, act) * up


class MLP(Module):
    def __init__(self, name: str, dim: int, hidden: int, act: str = "gelu", *, gated: bool = False,
                 bias: bool = False, names: Mapping[str, str] | None = None, dtype="float32"):
        super().__init__(name, dtype)
        if act not in ACTIVATIONS:
            raise ValueError(f"MLP {name!r}: activation {act!r} is not one of {ACTIVATIONS}")
        n = {**NAMES, **(names or {})}
        self.act, self.is_gated, self.hidden = act, gated, hidden
        if gated:
            self.up = Linear(f"{name}.{n['gate_up']}", dim, 2 * hidden, bias, parts=(hidden, hidden), dtype=dtype)
        else:
            self.up = Linear(f"{name}.{n['up']}", dim, hidden, bias, dtype=dtype)
        self.down = Linear(f"{name}.{n['down']}", hidden, dim, bias, dtype=dtype)

    def __call__(self, g: Graph, x: Value) -> Value:
        h = self.up(g, x)
        if self.is_gated:
            h = gated_activation(g, *g.split(h, sizes=[self.hidden, self.hidden], axis=-1), self.act)
        else:
            h = activation(g, h, self.act)
        return self.down(g, h)
