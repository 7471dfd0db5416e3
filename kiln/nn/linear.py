"""Linear projections and embedding tables."""

from __future__ import annotations

from kiln.ir import Graph, Value

from .module import Module, ParamSpec


class Linear(Module):
    """y = x W^T + b with W [out, in] (HF's layout); `parts` names a load-time fusion's row blocks.

    `reduce_world` > 1 makes it row-parallel (tensor parallelism): this rank holds a slice of the
    input features, and the partial products are summed over the ranks (all_reduce) before the
    bias is added once."""

    def __init__(self, name: str, in_features: int, out_features: int, bias: bool = False, *,
                 parts: tuple[int, ...] | None = None, reduce_world: int = 1, dtype="float32"):
        super().__init__(name, dtype)
        if parts is not None and sum(parts) != out_features:
            raise ValueError(f"Linear {name!r}: parts {parts} do not add up to out_features {out_features}")
        self.in_features, self.out_features, self.bias, self.parts = in_features, out_features, bias, parts
        self.reduce_world = reduce_world

    def own_params(self) -> dict[str, ParamSpec]:
        p = {"weight": ParamSpec((self.out_features, self.in_features), self.dtype, self.parts)}
        if self.bias:
            p["bias"] = ParamSpec((self.out_features,), self.dtype, self.parts)
        return p

    def __call__(self, g: Graph, x: Value) -> Value:
        if self.reduce_world == 1:
            return g.linear(x, self.param(g, "weight"), self.param(g, "bias") if self.bias else None)
        y = g.all_reduce(g.linear(x, self.param(g, "weight")), world=self.reduce_world)
        return g.add(y, self.param(g, "bias")) if self.bias else y


class Embedding(Module):
    """A [num, dim] table looked up by ids; `as_linear` reuses it as a tied output projection.

    `scale` multiplies the looked-up rows (not the tied projection), rounded to the table's dtype
    first, as Gemma scales its embeddings by sqrt(hidden) in the model dtype."""

    def __init__(self, name: str, num: int, dim: int, *, scale: float | None = None, dtype="float32"):
        super().__init__(name, dtype)
        self.num, self.dim, self.scale = num, dim, scale

    def own_params(self) -> dict[str, ParamSpec]:
        return {"weight": ParamSpec((self.num, self.dim), self.dtype)}

    def weight(self, g: Graph) -> Value:
        return self.param(g, "weight")

    def __call__(self, g: Graph, ids: Value) -> Value:
        rows = g.embedding(ids, self.weight(g))
        if self.scale is None:
            return rows
        return rows * g.scalar(self.scale, self.dtype)  # the scalar is rounded to the dtype

    def as_linear(self, g: Graph, x: Value) -> Value:
        """x @ table^T: logits over the table's rows (tied input/output embeddings)."""
        return g.linear(x, self.weight(g))
