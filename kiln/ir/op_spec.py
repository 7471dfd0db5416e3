"""One registry of op specs: inputs, attributes, type inference and category per op.

Every level of the pipeline (HIR blocks, fused MIR ops, primitives) is a subset of
this registry; backends and autodiff look ops up here by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .tensor_type import TensorType

REQUIRED = object()  # marks an attribute without a default

CATEGORIES = (
    "pointwise", "reduction", "matmul", "attention", "layout", "gather",
    "norm", "conv", "pool", "resample", "source", "collective",
)

InferFn = Callable[[list, dict], "list[TensorType] | TensorType"]


@dataclass(frozen=True)
class OpSpec:
    """What an op is: its inputs, attributes with defaults, type rule and category.

    `inputs` names positional inputs; a name ending in "?" is optional (may be None),
    a name starting with "*" is variadic (one or more values, e.g. concat).
    `infer(input_types, attrs)` returns the output TensorType(s) or raises GraphError.
    """

    name: str
    category: str
    inputs: tuple[str, ...]
    infer: InferFn
    attrs: dict[str, Any] = field(default_factory=dict)
    num_outputs: int | Callable[[dict], int] = 1
    differentiable: bool = True
    doc: str = ""

    @property
    def variadic(self) -> bool:
        return any(i.startswith("*") for i in self.inputs)

    def outputs_for(self, attrs: dict) -> int:
        return self.num_outputs(attrs) if callable(self.num_outputs) else self.num_outputs


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} registered twice")
    if spec.category not in CATEGORIES:
        raise ValueError(f"op {spec.name!r}: unknown category {spec.category!r}")
    OPS[spec.name] = spec
    return spec


def get_op(name: str) -> OpSpec:
    _ensure_loaded()
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered ops: {sorted(OPS)}") from None


def all_ops() -> dict[str, OpSpec]:
    _ensure_loaded()
    return dict(OPS)


def _ensure_loaded() -> None:
    from . import ops  # noqa: F401  (registers every op on import)
