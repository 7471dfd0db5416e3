"""kiln: a Python ML compiler and runtime.

Build or load a static typed graph, optimize it with equality saturation, plan its
memory and run it as fused kernels on the CPU (NumPy) or an NVIDIA GPU (Triton).

The public names are imported on first use (PEP 562), so `import kiln` (and with it the
`kiln` command's `--help`) does not pay for NumPy, ml_dtypes and the optimizer up front.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "compile": "kiln.api",
    "grad": "kiln.autodiff", "hvp": "kiln.autodiff", "jvp": "kiln.autodiff", "vjp": "kiln.autodiff",
    "vmap": "kiln.autodiff",
    "DType": "kiln.ir", "Graph": "kiln.ir", "GraphError": "kiln.ir", "TensorType": "kiln.ir",
    "as_dtype": "kiln.ir", "load_graph": "kiln.ir", "save_graph": "kiln.ir",
}


def load(path_or_id, device: str = "cpu", dtype: str = "float32", **options):
    """Load a checkpoint directory or local-cache model id; the family comes from config.json."""
    from kiln.load import load as _load
    return _load(path_or_id, device=device, dtype=dtype, **options)


_load_function = load


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def _function_slot(name: str, default):
    """`kiln.compile` and `kiln.load` are functions, but kiln/compile/ and kiln/load.py are also
    submodules, and importing a submodule sets the attribute of that name on its package. This
    property keeps the function there whichever is imported first; assigning a non-module
    value (e.g. monkeypatching) still works."""
    key = f"_{name}_override"

    def get(self):
        value = self.__dict__.get(key)
        return value if value is not None else default()

    def put(self, value):
        if not isinstance(value, types.ModuleType):
            self.__dict__[key] = value

    return property(get, put)


class _Package(types.ModuleType):
    compile = _function_slot("compile", lambda: importlib.import_module("kiln.api").compile)
    load = _function_slot("load", lambda: _load_function)


sys.modules[__name__].__class__ = _Package

__all__ = ["load", "compile", "grad", "hvp", "jvp", "vjp", "vmap", "DType", "Graph", "GraphError", "TensorType", "as_dtype", "load_graph", "save_graph"]
