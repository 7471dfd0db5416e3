"""kiln: a Python ML compiler and runtime.

Build or load a static typed graph, optimize it with equality saturation, plan its
memory and run it as fused kernels on the CPU (NumPy) or an NVIDIA GPU (Triton).
"""

import kiln.compile as _compile_package  # noqa: F401  (bind the package first: `kiln.compile` is the function)
from kiln.api import compile
from kiln.autodiff import grad, hvp, jvp, vjp, vmap
from kiln.ir import DType, Graph, GraphError, TensorType, as_dtype, load_graph, save_graph

__version__ = "0.1.0"

__all__ = ["compile", "grad", "hvp", "jvp", "vjp", "vmap", "DType", "Graph", "GraphError", "TensorType", "as_dtype", "load_graph", "save_graph"]
