"""The NumPy backend runs the Plan out of its arenas: right results, no per-step buffers, load-time hoisting,
kernel grouping by archetype and the half-precision policy."""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import kiln
from kiln.compile import build_plan
from kiln.compile.kernels import kernel_counts
from kiln.ir import Graph


def _mlp_graph(n=128, layers=6, reduce=False):
    g = Graph("mlp")
    x = g.input("x", (n, n))
    h = x
    for i in range(layers):
        w = g.parameter(f"w{i}", (n, n))
        y = g.matmul(h, g.transpose(w, perm=[1, 0]))
        y = g.relu(y) + g.tanh(g.reshape(g.reshape(y, shape=[n * n]), shape=[n, n]))
        h = g.exp(g.neg(g.relu(y))) * h
    g.output("y", g.sum(h, axes=[-1], keepdims=True) if reduce else h)
    return g


def _params(g, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in g.parameters.items()}


def _reference(g, feeds):
    from kiln.backends.numpy.kernels import KERNELS
    env = {}
    for n in g.nodes:
        if n.op in ("input", "parameter"):
            env[n.outputs[0].id] = feeds[n.name]
        elif n.op == "constant":
            env[n.outputs[0].id] = n.attrs["value"]
        else:
            args = [([env[v.id] for v in a] if isinstance(a, list) else (None if a is None else env[a.id]))
                    for a in n.inputs]
            res = KERNELS[n.op](*args, **n.attrs)
            for o, r in zip(n.outputs, res if isinstance(res, tuple) else (res,)):
                env[o.id] = r
    return {k: env[v.id] for k, v in g.outputs.items()}


@pytest.mark.parametrize("optimize", [False, True])
def test_steady_state_runs_allocate_no_intermediate_buffers(optimize):
    n = 256
    g = _mlp_graph(n, layers=4, reduce=True)  # 256x256 intermediates, a [256, 1] result
    cg = kiln.compile(g, optimize=optimize)
    params = _params(g)
    cg.load_params(params)
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    want = _reference(g, {"x": x, **params})["y"]
    np.testing.assert_allclose(cg.run(x=x)["y"], want, rtol=1e-5, atol=1e-5)  # warm: load-time steps ran
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = cg.run(x=x)["y"]
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    intermediate = n * n * 4
    assert cg.plan.memory.unplanned_bytes > 20 * intermediate
    assert peak < intermediate // 4, f"a run allocated up to {peak} bytes at once; a {intermediate}-byte " \
                                     f"intermediate must not be allocated"


def test_views_alias_their_base_and_weight_transposes_run_at_load_time():
    g = _mlp_graph(16, layers=2)
    plan = build_plan(g)
    views = [s for s in plan.steps if s.kind == "view"]
    assert {s.op for s in views} == {"reshape"} and len(views) == 4
    for s in views:
        assert plan.memory.value_storage[s.outputs[0]] == plan.memory.value_storage[s.inputs[0]]
    assert [s.op for s in plan.load_steps] == ["transpose", "transpose"]
    assert all(s.kind == "compute" for s in plan.steps if s.op != "reshape")


def test_load_time_steps_rerun_when_parameters_change():
    g = Graph()
    x = g.input("x", (3, 4))
    wq, wk = g.parameter("wq", (5, 4)), g.parameter("wk", (2, 4))
    both = g.concat([wq, wk], axis=0)          # depends only on parameters: a load-time step
    g.output("y", g.matmul(x, g.transpose(both, perm=[1, 0])))
    cg = kiln.compile(g, optimize=False)
    assert [s.op for s in cg.plan.load_steps] == ["concat", "transpose"]
    x_ = np.ones((3, 4), np.float32)
    for seed in (0, 1):
        params = _params(g, seed, scale=1.0)
        cg.load_params(params)
        np.testing.assert_allclose(cg.run(x=x_)["y"], _reference(g, {"x": x_, **params})["y"], rtol=1e-6)


def test_kernels_are_the_launches_every_backend_makes():
    """Pointwise chains fuse into one launch, and a chain whose value a later step also reads joins
    the chain after it as a second output; a matmul keeps only a cast epilogue (other epilogues
    are the optimizer's fused_linear); reductions take no pointwise prologue."""
    g = Graph()
    x = g.input("x", (4, 8))
    y = g.linear(x, g.parameter("w", (8, 8)))
    y = g.tanh(y) * 2.0 + x                        # a pointwise chain after the matmul
    e = g.exp(y - 1.0)                             # a pointwise chain before the reduction
    s = g.sum(e, axes=[-1], keepdims=True)
    p = g.softmax(g.transpose(y, perm=[1, 0]))     # a view, then a reduction
    g.output("s", s)
    g.output("p", p)
    plan = build_plan(g)
    assert kernel_counts(plan.kernels) == {"pointwise": 1, "reduction": 2, "matmul": 1}
    chains = [[plan.steps[i].op for i in k.steps] for k in plan.kernels if k.archetype == "pointwise"]
    assert chains == [["tanh", "mul", "add", "sub", "exp"]]     # y (read by the transpose) and e

    h = Graph()
    xb = h.input("x", (4, 8), "bfloat16")
    h.output("logits", h.cast(h.linear(xb, h.parameter("w", (16, 8), "bfloat16")), dtype="float32"))
    plan = build_plan(h)
    assert [(k.pattern, [plan.steps[i].op for i in k.steps]) for k in plan.kernels] == \
        [("matmul_cast", ["linear", "cast"])]


def test_half_precision_policy_computes_norms_matmuls_and_softmax_in_float32():
    torch = pytest.importorskip("torch")
    g = Graph()
    x = g.input("x", (4, 16), "bfloat16")
    w = g.parameter("w", (16,), "bfloat16")
    m = g.parameter("m", (8, 16), "bfloat16")
    y = g.softmax(g.linear(g.rms_norm(x, w, eps=1e-5), m))
    g.output("y", g.add(y, y))
    plan = build_plan(g)
    by_op = {s.op: s for s in plan.steps}
    for op in ("rms_norm", "linear", "softmax"):
        assert by_op[op].compute_dtype == by_op[op].accumulate_dtype == "float32"
    assert by_op["add"].compute_dtype == "float32" and by_op["add"].accumulate_dtype is None
    assert plan.memory.arenas.keys() == {"bfloat16"}
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v.shape).astype(ml_dtypes.bfloat16) for k, v in {**g.inputs, **g.parameters}.items()}
    cg = kiln.compile(g)
    cg.load_params({k: feeds[k] for k in ("w", "m")})
    got = cg.run(x=feeds["x"])["y"]
    assert got.dtype == ml_dtypes.bfloat16
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in feeds.items()}
    ref = torch.nn.functional.rms_norm(t["x"], (16,), t["w"], eps=1e-5).to(torch.bfloat16).float()
    ref = torch.softmax((ref @ t["m"].T).to(torch.bfloat16).float(), -1).to(torch.bfloat16).float()
    ref = (ref + ref).to(torch.bfloat16).float().numpy()
    np.testing.assert_allclose(got.astype(np.float32), ref, rtol=1.6e-2, atol=1e-2)


def test_missing_kernel_is_reported_by_name():
    from kiln.backends.numpy.executor import NumpyExecutor
    g = Graph()
    x = g.input("x", (2,))
    g.output("y", g.relu(x))
    plan = build_plan(g)
    plan.steps[0].op = "no_such_kernel"
    with pytest.raises(NotImplementedError, match="no kernel for op\\(s\\) \\['no_such_kernel'\\]"):
        NumpyExecutor(plan)
