"""`Module`: a building block that owns its parameters.

A block declares its parameters once (`own_params`: local name -> `ParamSpec`) and builds
its ops in `__call__(g, x, ...)`. Parameter names are the block's `name` plus the local
name (`model.layers.0.mlp.down_proj` + `weight`); the same declaration gives the graph's
parameters (`param`) and the shapes the checkpoint loader checks (`params`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir import Graph, GraphError, Value, as_dtype


@dataclass(frozen=True)
class ParamSpec:
    """A parameter's shape and dtype; `parts` are the sizes along axis 0 of a matrix fused at load
    time (Q/K/V, gate/up), so a loader can check each checkpoint tensor before concatenating."""

    shape: tuple[int, ...]
    dtype: str
    parts: tuple[int, ...] | None = None


class Module:
    """A named block: its own parameters plus those of the blocks it holds (attributes, or lists of them)."""

    def __init__(self, name: str = "", dtype="float32"):
        self.name, self.dtype = name, as_dtype(dtype).name

    def own_params(self) -> dict[str, ParamSpec]:
        return {}

    def children(self) -> list[Module]:
        out = []
        for v in vars(self).values():
            if isinstance(v, Module):
                out.append(v)
            elif isinstance(v, (list, tuple)):
                out += [m for m in v if isinstance(m, Module)]
        return out

    def full_name(self, local: str) -> str:
        return f"{self.name}.{local}" if self.name else local

    def params(self) -> dict[str, ParamSpec]:
        """Every parameter of this block and its children: full name -> spec (a shared one listed once)."""
        out = {self.full_name(k): s for k, s in self.own_params().items()}
        for child in self.children():
            for k, s in child.params().items():
                if out.setdefault(k, s) != s:
                    raise GraphError(f"parameter {k!r} is declared twice with different specs: {out[k]} and {s}")
        return out

    def param(self, g: Graph, local: str) -> Value:
        """The graph parameter `local` of this block (created on first use, shared after)."""
        spec = self.own_params()[local]
        name = self.full_name(local)
        have = g.parameters.get(name)
        if have is None:
            return g.parameter(name, spec.shape, spec.dtype)
        if have.shape != spec.shape or have.dtype.name != spec.dtype:
            raise GraphError(f"parameter {name!r} exists as {have.type}, expected "
                             f"{spec.dtype}[{', '.join(map(str, spec.shape))}]")
        return have

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
