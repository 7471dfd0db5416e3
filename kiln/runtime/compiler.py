"""Graph in, runnable compiled graph out: optimize, plan, and bind the device's backend."""

from __future__ import annotations

DEVICES = ("cpu", "cuda")


def reference_evaluate(op: str, inputs: list, attrs: dict):
    """Evaluate one op with the NumPy reference kernels (constant folding uses this)."""
    from kiln.backends.numpy.kernels import KERNELS
    return KERNELS[op](*inputs, **attrs)


def compile(graph, device: str = "cpu", optimize: bool = True, cache: bool | None = None,
            planned_ahead: bool = False, recipe=None):
    """Optimize (unless optimize=False, for debugging), plan and bind a backend for `graph`.

    The returned CompiledGraph carries `.report` (a CompileReport: fusions, kernels,
    memory, time per stage, whether the plan came from the persistent compile cache).
    `cache=False` (or KILN_COMPILE_CACHE=0) compiles without the cache. `planned_ahead`: the plan
    was stored just now by a planning process (kiln.compile.plan_ahead), so its cache hit is new
    (`report.cache == "ahead"`). `recipe`: what builds the graph (kiln/compile/cache.py), so a
    stored plan is found without building it; `graph` may then be a function that builds it.

    On cuda the kernels start compiling in worker processes at once (kiln/backends/triton/
    compile_workers.py), unless an earlier process ran this plan and its binaries are still in
    Triton's disk cache (kiln/backends/triton/kernels_on_disk.py): the first run then only loads them.
    """
    from kiln.compile import compile_graph
    from kiln.compile.gc_pause import gc_paused

    from .compiled_graph import CompiledGraph

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device == "cuda":   # hash Triton's installation while the graph is planned (0.3 s per process)
        from kiln.backends.triton.precompile import start_triton_key
        start_triton_key()
    with gc_paused():   # planning and lowering allocate objects by the million (kiln/compile/gc_pause.py)
        plan, report = compile_graph(graph, device=device, optimize=optimize, evaluate=reference_evaluate,
                                     cache=cache, recipe=recipe)
        if planned_ahead and report.cache == "hit":
            report.cache = "ahead"
        if device == "cuda":
            from kiln.backends.triton import TritonExecutor
            ex = TritonExecutor(plan, kernels_key=report.cache_key)
            return CompiledGraph(plan, ex, device, report=report)
        from kiln.backends.numpy.executor import NumpyExecutor
        return CompiledGraph(plan, NumpyExecutor(plan), device, report=report)
