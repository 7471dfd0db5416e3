"""Importing this package registers every op spec, one module per category."""

from . import elementwise, reduction, matmul, layout, norm, attention  # noqa: F401
from . import conv  # noqa: F401
from . import fused  # noqa: F401
from . import cache  # noqa: F401  (state updates)
from . import grad  # noqa: F401  (ops that backward passes need)
from . import collective  # noqa: F401  (across the ranks of a process group)
