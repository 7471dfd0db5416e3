"""NumPy reference kernels, one module per op category; `KERNELS` maps op name -> function.

A kernel takes the op's inputs as arrays (a list for variadic inputs, None for an
absent optional one) and its attributes as keywords, and returns an array (or a
tuple for multi-output ops). Half-precision inputs are computed in float32 and
rounded once at the end, the precision policy every backend follows.
"""

from ._registry import KERNELS, kernel  # noqa: F401
from . import elementwise, reduction, matmul, layout, norm, attention, conv  # noqa: F401
from . import fused  # noqa: F401
from . import grad  # noqa: F401  (backward-pass ops)
from . import collective  # noqa: F401  (torch.distributed)
