"""Importing this package registers every differentiation rule, one module per op category
(mirroring kiln/ir/ops)."""

from . import elementwise, reduction, matmul, layout, norm, attention  # noqa: F401
from . import conv, fused, grad  # noqa: F401
from . import collective  # noqa: F401
