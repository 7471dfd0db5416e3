"""`kiln.compile`: graph in, runnable compiled graph out."""

from __future__ import annotations

from kiln.ir import Graph

DEVICES = ("cpu", "cuda")


def compile(graph: Graph, device: str = "cpu", optimize: bool = True):
    """Optimize (unless optimize=False), plan and bind a backend for `graph`."""
    from kiln.compile.plan import build_plan
    from kiln.runtime.compiled_graph import CompiledGraph

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    plan = build_plan(graph)
    if device == "cpu":
        from kiln.backends.numpy.executor import NumpyExecutor
        return CompiledGraph(plan, NumpyExecutor(plan), device)
    raise NotImplementedError("device='cuda' needs the Triton backend, which is not built yet")
