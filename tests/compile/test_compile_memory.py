"""Arena memory planning: no two tensors live at the same time share bytes, reuse is real, results stay right."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from kiln.backends.numpy.kernels import KERNELS
from kiln.compile import build_plan
from kiln.compile.memory import ALIGN
from kiln.ir import Graph, get_op


def reference_run(graph, feeds):
    """Node by node with the reference kernels, no plan or arena."""
    env = {}
    for n in graph.nodes:
        if n.op in ("input", "parameter"):
            env[n.outputs[0].id] = feeds[n.name]
        elif n.op == "constant":
            env[n.outputs[0].id] = n.attrs["value"]
        else:
            args = [([env[v.id] for v in x] if isinstance(x, list) else (None if x is None else env[x.id]))
                    for x in n.inputs]
            res = KERNELS[n.op](*args, **n.attrs)
            for o, r in zip(n.outputs, res if isinstance(res, tuple) else (res,)):
                env[o.id] = r
    return {k: env[v.id] for k, v in graph.outputs.items()}


def assert_no_live_overlap(plan):
    """Storages whose byte ranges overlap in an arena must never be live at the same step,
    except an in-place pair: the output takes its input's bytes at the step the input dies."""
    sts = list(plan.memory.storages.values())
    for s in sts:
        assert s.offset >= 0 and s.offset % ALIGN == 0
        assert s.offset + s.nbytes <= plan.memory.arenas[s.dtype]
    for i, a in enumerate(sts):
        for b in sts[i + 1:]:
            if a.dtype != b.dtype or a.nbytes == 0 or b.nbytes == 0:
                continue
            if a.offset >= b.offset + b.nbytes or b.offset >= a.offset + a.nbytes:
                continue  # disjoint bytes
            if a.end < b.start or b.end < a.start:
                continue  # disjoint lifetimes
            first, second = (a, b) if a.start <= b.start else (b, a)
            step = plan.steps[second.start]
            legal = (second.inplace_of == first.owner and first.end == second.start and step.inplace
                     and get_op(step.op).category == "pointwise"
                     and plan.types[first.owner].shape == plan.types[second.owner].shape)
            assert legal, (f"values %{a.owner} {plan.types[a.owner]} [{a.start}, {a.end}] and %{b.owner} "
                           f"{plan.types[b.owner]} [{b.start}, {b.end}] share arena bytes")


STEPS = ["add", "mul", "exp", "tanh", "relu", "linear", "reshape", "transpose", "slice", "concat", "softmax",
         "sum", "split"]


@st.composite
def random_graphs(draw):
    g = Graph("memory")
    pool = [g.input("x", (4, 8)), g.input("z", (4, 8))]
    n = 0
    for _ in range(draw(st.integers(1, 14))):
        step = draw(st.sampled_from(STEPS))
        x = draw(st.sampled_from(pool))
        same = [v for v in pool if v.shape == x.shape]
        y = draw(st.sampled_from(same))
        n += 1
        if step in ("add", "mul"):
            v = getattr(g, step)(x, y)
        elif step in ("exp", "tanh", "relu", "softmax"):
            v = getattr(g, step)(g.tanh(x) if step == "exp" else x)
        elif step == "linear":
            v = g.linear(x, g.parameter(f"w{n}", (draw(st.sampled_from([8, 16])), x.shape[-1])))
        elif step == "reshape":
            v = g.reshape(x, shape=[-1])
        elif step == "transpose":
            v = g.transpose(x, perm=list(range(x.ndim))[::-1])
        elif step == "slice":
            v = g.slice(x, axes=[0], starts=[1], ends=[x.shape[0]])
        elif step == "concat":
            v = g.concat([x, y], axis=0)
        elif step == "sum":
            v = g.sum(x, axes=[-1], keepdims=True)
        else:
            if x.shape[0] < 2:
                continue
            v = g.split(x, sizes=[1, x.shape[0] - 1], axis=0)[1]
        pool.append(v)
    g.output("out", pool[-1])
    k = draw(st.integers(0, len(pool) - 1))
    if pool[k] is not pool[-1]:
        g.output("also", pool[k])
    return g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_graphs(), seed=st.integers(0, 1000))
def test_no_two_live_tensors_share_arena_bytes(graph, seed):
    plan = build_plan(graph)
    assert_no_live_overlap(plan)
    assert plan.memory.planned_bytes <= sum(-(-s.nbytes // ALIGN) * ALIGN for s in plan.memory.storages.values())
    rng = np.random.default_rng(seed)
    feeds = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in {**graph.inputs, **graph.parameters}.items()}
    cg = kiln.compile(graph, optimize=False)
    cg.load_params({k: feeds[k] for k in graph.parameters})
    for _ in range(2):  # the second run reuses the same arena
        got = cg.run(**{k: feeds[k] for k in graph.inputs})
        want = reference_run(graph, feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)


def test_llama_plan_reuses_memory_without_overlap():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import llama_primitive_graph as L
    cg = kiln.compile(L.build(L.TINY, seq=8))
    assert_no_live_overlap(cg.plan)
    mem = cg.plan.memory
    assert mem.planned_bytes * 3 < mem.unplanned_bytes
    assert any(s.inplace for s in cg.plan.steps)


def test_pointwise_chain_runs_in_place_in_one_buffer():
    g = Graph()
    x = g.input("x", (64, 64))
    y = g.exp(g.tanh(x))
    for _ in range(5):
        y = g.relu(g.neg(y))
    g.output("y", g.tanh(y))
    plan = build_plan(g)
    assert_no_live_overlap(plan)
    assert plan.memory.arenas == {"float32": 64 * 64 * 4}
    assert sum(s.inplace for s in plan.steps) == len(plan.steps) - 1


def concat_of_placed_and_copied_inputs():
    """concat([exp(x), reshape(transpose(z)), tanh(x) (read twice), z], axis=-1), then its use;
    the first two are computed into their slices, the last two are copied."""
    g = Graph()
    x, z = g.input("x", (4, 6)), g.input("z", (4, 6))
    a = g.exp(x)
    b = g.reshape(g.transpose(g.reshape(z, shape=[4, 2, 3]), perm=[0, 2, 1]), shape=[4, 6])  # a copy
    c = g.tanh(x)
    cat = g.concat([a, b, c, z], axis=-1)
    g.output("y", g.mul(cat, cat))
    g.output("c", g.sum(c, axes=[-1]))
    return g, (a, b, c)


def test_a_concats_inputs_are_computed_into_its_slices():
    g, (a, b, c) = concat_of_placed_and_copied_inputs()
    plan = build_plan(g)
    assert_no_live_overlap(plan)
    assert plan.memory.slices == {a.id: (1, 0), b.id: (1, 6)}
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 6)).astype(np.float32), "z": rng.standard_normal((4, 6)).astype(np.float32)}
    cg = kiln.compile(g, optimize=False)
    for _ in range(2):
        got, want = cg.run(**feeds), reference_run(g, feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
