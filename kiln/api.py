"""`kiln.compile`: graph in, runnable compiled graph out (see kiln.runtime.compiler)."""

from kiln.runtime.compiler import DEVICES, compile, reference_evaluate

__all__ = ["DEVICES", "compile", "reference_evaluate"]
