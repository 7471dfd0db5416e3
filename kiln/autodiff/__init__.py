"""Reverse and forward mode on graphs, and batching.

`grad` / `vjp` return a graph that computes gradients next to the outputs; `jvp` adds tangents;
`hvp` is forward-over-reverse; `vmap` adds a leading batch axis. Every result is an ordinary
Graph that `kiln.compile` runs like any other.
"""

from .forward import hvp, hvp_name, jvp, tangent_name
from .registry import DECOMPOSITIONS, GRAD_FORWARDS, JVP_RULES, VJP_RULES, has_jvp, has_vjp
from .reverse import cotangent_name, grad, grad_name, vjp
from .vmap import vmap

__all__ = ["grad", "vjp", "jvp", "hvp", "vmap", "grad_name", "cotangent_name", "tangent_name", "hvp_name",
           "VJP_RULES", "JVP_RULES", "DECOMPOSITIONS", "GRAD_FORWARDS", "has_vjp", "has_jvp"]
