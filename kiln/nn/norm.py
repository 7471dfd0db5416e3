"""Normalization over the last axis: RMSNorm (plain, `(1 + w)` and scale-free) and LayerNorm."""

from __future__ import annotations

from kiln.ir import Graph, Value

from .module import Module, ParamSpec


class RMSNorm(Module):
    """x / rms(x) * w; `add_unit_offset` scales by (1 + w) (Gemma), `scale=False` has no weight."""

    def __init__(self, name: str, dim: int, eps: float = 1e-6, *, add_unit_offset: bool = False,
                 scale: bool = True, dtype="float32"):
        super().__init__(name, dtype)
        self.dim, self.eps, self.add_unit_offset, self.scale = dim, eps, add_unit_offset, scale

    def own_params(self) -> dict[str, ParamSpec]:
        return {"weight": ParamSpec((self.dim,), self.dtype)} if self.scale else {}

    def __call__(self, g: Graph, x: Value) -> Value:
        w = self.param(g, "weight") if self.scale else None
        return g.rms_norm(x, w, eps=self.eps, add_unit_offset=self.add_unit_offset)


class LayerNorm(Module):
    """(x - mean) / std * w + b over the last axis."""

    def __init__(self, name: str, dim: int, eps: float = 1e-5, *, bias: bool = True, dtype="float32"):
        super().__init__(name, dtype)
        self.dim, self.eps, self.bias = dim, eps, bias

    def own_params(self) -> dict[str, ParamSpec]:
        p = {"weight": ParamSpec((self.dim,), self.dtype)}
        if self.bias:
            p["bias"] = ParamSpec((self.dim,), self.dtype)
        return p

    def __call__(self, g: Graph, x: Value) -> Value:
        return g.layer_norm(x, self.param(g, "weight"), self.param(g, "bias") if self.bias else None, eps=self.eps)
