"""Run one graph through the NumPy reference executor and the Triton executor and compare."""

from __future__ import annotations

import numpy as np

from kiln.backends.numpy.executor import NumpyExecutor
from kiln.backends.triton import TritonExecutor
from kiln.compile.plan import build_plan
from kiln.runtime.compiled_graph import CompiledGraph

# max |kiln - reference| allowed, relative to max |reference|, by output dtype
TOL = {"float32": 2e-5, "float64": 1e-9, "bfloat16": 2e-2, "float16": 4e-3}


def compiled_pair(graph, optimize: bool = False):
    """The graph planned as written (single-kernel tests), or through the e-graph optimizer."""
    if optimize:
        from kiln.api import reference_evaluate
        from kiln.compile import compile_graph
        plan, report = compile_graph(graph, optimize=True, evaluate=reference_evaluate)
        assert not report.optimizer_fell_back, report.optimizer_reason
    else:
        plan = build_plan(graph)
    return CompiledGraph(plan, NumpyExecutor(plan), "cpu"), CompiledGraph(plan, TritonExecutor(plan), "cuda")


def run_both(graph, inputs: dict, params: dict | None = None, optimize: bool = False):
    ref_cg, cg = compiled_pair(graph, optimize)
    if params:
        ref_cg.load_params(params)
        cg.load_params(params)
    return ref_cg.run(**inputs), cg.run(**inputs), cg


def assert_close(out: dict, ref: dict, tol: dict | None = None, floor: float = 0.0) -> None:
    """`floor`: the smallest relative tolerance for any float output (a half-precision graph's
    float32 outputs carry half-precision error)."""
    assert set(out) == set(ref)
    for name, r in ref.items():
        o = out[name]
        assert o.shape == r.shape and o.dtype == r.dtype, f"{name}: {o.shape} {o.dtype} vs {r.shape} {r.dtype}"
        if r.dtype.kind in "iub":
            np.testing.assert_array_equal(o, r, err_msg=name)
            continue
        rf, of = r.astype(np.float64), o.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(of), np.isnan(rf), err_msg=f"{name}: NaN positions differ")
        np.testing.assert_array_equal(np.isinf(of), np.isinf(rf), err_msg=f"{name}: inf positions differ")
        fin = np.isfinite(rf)
        scale = max(np.abs(rf[fin]).max(initial=0.0), 1.0)
        err = np.abs(of[fin] - rf[fin]).max(initial=0.0)
        limit = max((tol or TOL)[r.dtype.name], floor) * scale
        assert err <= limit, f"{name}: max error {err:.3g} > {limit:.3g}"


def check(graph, inputs: dict, params: dict | None = None, tol: dict | None = None, optimize: bool = False):
    ref, out, cg = run_both(graph, inputs, params, optimize)
    arrays = list(inputs.values()) + list((params or {}).values())
    half = [TOL[a.dtype.name] for a in arrays if a.dtype.name in ("bfloat16", "float16")]
    assert_close(out, ref, tol, floor=max(half, default=0.0))
    return cg.executor


def randn(rng, shape, dtype="float32", scale=1.0):
    from kiln.ir import as_dtype
    return (scale * rng.standard_normal(shape)).astype(as_dtype(dtype).np_dtype)
