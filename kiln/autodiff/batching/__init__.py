"""Batching rules for `vmap`, one module per op category, and the unrolling fallback.

A rule `rule(g, node, args, flags, b) -> outputs` gets the original node (its types and
attributes are the per-example ones), the new inputs `args` (structured like node.inputs)
with `flags` saying which carry the leading batch axis of size b, and returns the new
outputs, all batched.
"""

from ._core import BATCH_RULES, batch_rule, unrolled  # noqa: F401
from . import elementwise, reduction, matmul, layout, norm, attention, conv, grad  # noqa: F401
