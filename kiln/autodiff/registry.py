"""Tables of differentiation rules, keyed by op name and filled by `kiln.autodiff.rules`.

Four kinds of entry, any of which makes an op differentiable:

- VJP rule    `vjp(node, cts, needs) -> input cotangents` (reverse mode). `node` is the op's
  node in the graph being built; `cts` holds one cotangent (or None) per output; `needs`
  says, per input (a list for a variadic input), whether its cotangent is wanted. The rule
  returns one cotangent (or None) per input, a list for a variadic input.
- JVP rule    `jvp(node, tangents) -> output tangents` (forward mode). `tangents` holds one
  tangent (or None for zero) per input, a list for a variadic input.
- decomposition  `decompose(graph, inputs, attrs) -> outputs`: the op rewritten in ops that
  have rules. An op with no rule of the wanted kind is differentiated through its decomposition.
- gradient forward  `forward(graph, inputs, attrs) -> outputs`: when an op's result is
  differentiated, the forward pass uses this instead (attention -> attention_lse, which
  saves the log-sum-exp that attention's backward needs).
"""

from __future__ import annotations

from typing import Callable

VJP_RULES: dict[str, Callable] = {}
JVP_RULES: dict[str, Callable] = {}
DECOMPOSITIONS: dict[str, Callable] = {}
GRAD_FORWARDS: dict[str, Callable] = {}


def _register(table: dict, kind: str, names):
    def deco(fn):
        for n in names:
            if n in table:
                raise ValueError(f"{kind} for op {n!r} registered twice")
            table[n] = fn
        return fn
    return deco


def vjp_rule(*names: str):
    return _register(VJP_RULES, "VJP rule", names)


def jvp_rule(*names: str):
    return _register(JVP_RULES, "JVP rule", names)


def decomposition(*names: str):
    return _register(DECOMPOSITIONS, "decomposition", names)


def grad_forward(*names: str):
    return _register(GRAD_FORWARDS, "gradient forward", names)


def ensure_loaded() -> None:
    from . import rules  # noqa: F401  (registers every rule on import)


def has_vjp(op: str) -> bool:
    """True if reverse mode can differentiate `op` (directly, via its decomposition or gradient forward)."""
    ensure_loaded()
    return op in VJP_RULES or op in DECOMPOSITIONS or (op in GRAD_FORWARDS)


def has_jvp(op: str) -> bool:
    ensure_loaded()
    return op in JVP_RULES or op in DECOMPOSITIONS
