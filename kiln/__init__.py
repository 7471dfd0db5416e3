"""kiln: a Python ML compiler and runtime.

Build or load a static typed graph, optimize it with equality saturation, plan its
memory and run it as fused kernels on the CPU (NumPy) or an NVIDIA GPU (Triton).
"""

import kiln.compile as _compile_package  # noqa: F401  (bind the package first: `kiln.compile` is the function)
import kiln.load as _load_module  # noqa: F401  (likewise: a later import must not rebind `kiln.load`)
from kiln.api import compile
from kiln.autodiff import grad, hvp, jvp, vjp, vmap
from kiln.ir import DType, Graph, GraphError, TensorType, as_dtype, load_graph, save_graph

__version__ = "0.1.0"


def load(path_or_id, device: str = "cpu", dtype: str = "float32", **options):
    """Load a checkpoint directory or local-cache model id; the family comes from config.json."""
    from kiln.load import load as _load
    return _load(path_or_id, device=device, dtype=dtype, **options)

__all__ = ["load", "compile", "grad", "hvp", "jvp", "vjp", "vmap", "DType", "Graph", "GraphError", "TensorType", "as_dtype", "load_graph", "save_graph"]
