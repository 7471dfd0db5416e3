"""The persistent compile cache: a fresh process hits it and computes the same outputs; anything the
result depends on changes the key; a bad entry is a warned miss; KILN_COMPILE_CACHE=0 turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.api import reference_evaluate
from kiln.compile import compile_graph
from kiln.compile import cache as plan_cache
from kiln.ir import Graph
from kiln.opt import Limits

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import llama_primitive_graph as L


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KILN_COMPILE_CACHE", raising=False)
    return tmp_path / "plans"


def small(n=8, scale=0.5, dtype="float32", name="y", act="relu"):
    g = Graph("small")
    x = g.input("x", (2, n), dtype)
    w = g.parameter("w", (n, n), dtype)
    h = g.op(act, g.matmul(x, w, transpose_b=True))
    g.output(name, g.mul(h, g.scalar(scale, dtype)) + g.sum(x, axes=[1], keepdims=True))
    return g


def key(g, **kw):
    opts = dict(device="cpu", optimize=True, evaluate=reference_evaluate, rules=None, exclude_rules=(), limits=None)
    return plan_cache.compile_key(g, **{**opts, **kw})


_CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, {bench!r})
import kiln, llama_primitive_graph as L
g = L.build(L.TINY, seq=4)
cg = kiln.compile(g)
rng = np.random.default_rng(0)
params = {{n: (rng.standard_normal(t.shape) * 0.1).astype(t.dtype.np_dtype) for n, t in cg.param_types.items()}}
cg.load_params(params)
feeds = {{n: rng.integers(0, 3, t.shape).astype(t.dtype.np_dtype) if t.dtype.is_int else
          rng.standard_normal(t.shape).astype(t.dtype.np_dtype) for n, t in cg.input_types.items()}}
out = cg.run(**feeds)
np.savez({out!r}, **out)
r = cg.report
print(json.dumps(dict(cache=r.cache, stages=sorted(r.stage_seconds), kernels=r.kernels, fusions=r.fusions,
                      steps=len(cg.plan.steps), cold=sorted(r.cold_stage_seconds))))
"""


def test_a_fresh_process_hits_the_cache_and_computes_the_same_outputs(tmp_path):
    path = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": path}   # keep what the parent imports
    env.pop("KILN_COMPILE_CACHE", None)
    runs = []
    for i in range(2):
        code = _CHILD.format(bench=str(ROOT / "bench"), out=str(tmp_path / f"out{i}.npz"))
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["cache"] == "miss" and "saturate" in first["stages"]
    assert second["cache"] == "hit" and second["stages"] == ["cache_key", "cache_load"]
    assert second["cold"] == first["cold"] and "saturate" in second["cold"]   # the stages of the compile it saved
    assert (second["kernels"], second["fusions"], second["steps"]) == (first["kernels"], first["fusions"], first["steps"])
    a, b = np.load(tmp_path / "out0.npz"), np.load(tmp_path / "out1.npz")
    assert sorted(a.files) == sorted(b.files) == ["logits"]
    np.testing.assert_array_equal(a["logits"], b["logits"])
    assert len(list((tmp_path / "cache" / "plans").glob("*.pkl"))) == 1


def test_the_key_is_stable_and_follows_what_the_result_depends_on():
    base = key(small())
    assert key(small()) == base                              # rebuilt graph: same key
    changed = {
        "shape": key(small(n=16)),
        "dtype": key(small(dtype="float16")),
        "attr": key(small(act="gelu")),
        "constant value": key(small(scale=0.25)),
        "output name": key(small(name="z")),
        "device": key(small(), device="cuda"),
        "optimize": key(small(), optimize=False),
        "rules": key(small(), rules=["silu"]),
        "exclude_rules": key(small(), exclude_rules=["rms_norm"]),
        "limits": key(small(), limits=Limits(max_enodes=10)),
        "no folding": key(small(), evaluate=None),
    }
    for what, k in changed.items():
        assert k != base, what
    assert len(set(changed.values())) == len(changed)
    with pytest.raises(plan_cache.Uncacheable):               # a lambda evaluator has no stable name
        key(small(), evaluate=lambda op, xs, attrs: None)


def test_state_and_parameter_names_are_part_of_the_key():
    def with_state(name):
        g = Graph("s")
        s = g.state(name, (4,))
        g.assign(s, s + g.input("x", (4,)))
        return g

    def with_param(name):
        g = Graph("p")
        g.output("y", g.input("x", (4,)) * g.parameter(name, (4,)))
        return g

    assert key(with_state("a")) == key(with_state("a")) != key(with_state("b"))
    assert key(with_param("a")) == key(with_param("a")) != key(with_param("b"))


def test_second_compile_hits_and_runs_the_same(cache_dir, rng):
    g = small()
    first = kiln.compile(g)
    second = kiln.compile(small())
    assert first.report.cache == "miss" and second.report.cache == "hit"
    assert list(second.report.stage_seconds) == ["cache_key", "cache_load"]
    assert second.report.fusions == first.report.fusions and second.report.kernels == first.report.kernels
    w = rng.standard_normal((8, 8)).astype(np.float32)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    for cg in (first, second):
        cg.load_params({"w": w})
    np.testing.assert_array_equal(first.run(x=x)["y"], second.run(x=x)["y"])


def test_a_corrupt_entry_warns_and_recompiles(cache_dir):
    first = kiln.compile(small())
    (entry,) = cache_dir.glob("*.pkl")
    for garbage in (b"not a pickle", entry.read_bytes()[: entry.stat().st_size // 2]):
        entry.write_bytes(garbage)
        with pytest.warns(plan_cache.CompileCacheWarning, match="unreadable"):
            again = kiln.compile(small())
        assert again.report.cache == "miss" and again.report.fusions == first.report.fusions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kiln.compile(small()).report.cache == "hit"   # the recompile rewrote the entry


def test_an_entry_of_another_key_is_a_miss(cache_dir):
    kiln.compile(small())
    kiln.compile(small(n=4))
    a, b = sorted(cache_dir.glob("*.pkl"))
    a.write_bytes(b.read_bytes())                            # renamed / copied entries are not trusted
    with pytest.warns(plan_cache.CompileCacheWarning):
        for n in (8, 4):
            kiln.compile(small(n=n))


def test_the_cache_is_off_when_asked(cache_dir, monkeypatch):
    assert kiln.compile(small(), cache=False).report.cache == "off"
    assert not cache_dir.exists()
    monkeypatch.setenv("KILN_COMPILE_CACHE", "0")
    for _ in range(2):
        assert kiln.compile(small()).report.cache == "off"
    assert not cache_dir.exists()
    monkeypatch.setenv("KILN_COMPILE_CACHE", "1")
    assert kiln.compile(small()).report.cache == "miss"
    assert kiln.compile(small()).report.cache == "hit"


def test_an_optimizer_fallback_is_not_stored(cache_dir):
    from kiln.opt import OptimizationWarning

    g = L.build(L.TINY, seq=4)
    with pytest.warns(OptimizationWarning):
        _, r = compile_graph(g, evaluate=reference_evaluate, limits=Limits(max_enodes=10))
    assert r.optimizer_fell_back and r.cache == "miss"
    assert not cache_dir.exists() or not list(cache_dir.glob("*.pkl"))
    with pytest.warns(OptimizationWarning):                  # compiled (and warned) again, not read back
        _, again = compile_graph(g, evaluate=reference_evaluate, limits=Limits(max_enodes=10))
    assert again.cache == "miss"


def test_an_unwritable_cache_warns_and_compiles(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KILN_CACHE_DIR", str(blocker))       # a file where the directory should be
    with pytest.warns(plan_cache.CompileCacheWarning, match="cannot write"):
        cg = kiln.compile(small())
    assert cg.report.cache == "miss"


def test_a_graph_reading_a_foreign_value_gets_verify_s_error(cache_dir):
    from kiln.errors import GraphError

    other = Graph("other")
    foreign = other.input("z", (2,))
    g = Graph("g")
    y = g.relu(g.input("x", (2,)))
    g.output("y", y)
    y.node.inputs[0] = foreign                               # a node reading another graph's value
    with pytest.raises(plan_cache.Uncacheable):
        plan_cache.graph_key(g)
    with pytest.raises(GraphError, match="not defined before this node"):
        compile_graph(g)
    assert not cache_dir.exists()


def test_a_recipe_finds_its_plan_without_building_the_graph(cache_dir, rng):
    """A plan compiled under a recipe is found by it in a later compile, which builds nothing; another
    recipe (a different attribute of the builder) builds and compiles its own graph."""
    from kiln.models.llama import LlamaGraphs

    built = []

    def build(scale):
        def f():
            built.append(scale)
            return small(scale=scale)
        return f

    recipe = ("test", plan_cache.digest(LlamaGraphs(_tiny_llama(), "float32")), "small")
    first, report = compile_graph(build(0.5), evaluate=reference_evaluate, recipe=recipe)
    assert report.cache == "miss" and built == [0.5]
    again, report = compile_graph(build(0.5), evaluate=reference_evaluate, recipe=recipe)
    assert report.cache == "hit" and built == [0.5]            # the builder was not called
    assert report.cache_key == key(small(scale=0.5))
    other = ("test", plan_cache.digest(LlamaGraphs(_tiny_llama(rms_norm_eps=1e-5), "float32")), "small")
    _, report = compile_graph(build(0.25), evaluate=reference_evaluate, recipe=other)
    assert report.cache == "miss" and built == [0.5, 0.25]
    w, x = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((2, 8)).astype(np.float32)
    from kiln.runtime.compiled_graph import CompiledGraph
    from kiln.backends.numpy.executor import NumpyExecutor
    outs = []
    for plan in (first, again):
        cg = CompiledGraph(plan, NumpyExecutor(plan), "cpu")
        cg.load_params({"w": w})
        outs.append(cg.run(x=x)["y"])
    np.testing.assert_array_equal(outs[0], outs[1])


def _tiny_llama(**kw):
    from kiln.models.llama import LlamaConfig
    from kiln.nn.rope import RopeConfig
    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, vocab_size=64, rms_norm_eps=1e-6)
    return LlamaConfig(model_type="llama", tie_word_embeddings=True, rope=RopeConfig(theta=10000.0),
                       max_position_embeddings=128, **{**dims, **kw})


def test_describe_follows_kiln_objects_and_refuses_foreign_ones():
    """A builder is described by its attributes, recursively (so any config field changes it); an
    object whose state may live outside its attributes, or a lambda, makes the recipe uncacheable."""
    import threading

    from kiln.models.llama import LlamaGraphs

    assert plan_cache.digest(LlamaGraphs(_tiny_llama(), "float32")) == \
        plan_cache.digest(LlamaGraphs(_tiny_llama(), "float32"))
    changed = [LlamaGraphs(_tiny_llama(**kw), dt) for kw, dt in
               (({}, "bfloat16"), ({"rms_norm_eps": 1e-5}, "float32"), ({"head_dim": 16}, "float32"))]
    digests = {plan_cache.digest(g) for g in [LlamaGraphs(_tiny_llama(), "float32"), *changed]}
    assert len(digests) == 4
    for bad in (threading.Lock(), lambda: 0, {"f": (lambda: 0)}):
        with pytest.raises(plan_cache.Uncacheable):
            plan_cache.describe(bad)


def test_a_second_causal_lm_plans_from_its_recipes_alone(cache_dir, monkeypatch):
    """The second model of one config finds both plans of a warm-up by recipe: it builds no graph."""
    from kiln.models.llama import LlamaGraphs
    from kiln.runtime.language_model import CausalLM

    monkeypatch.setenv("KILN_PLAN_AHEAD", "0")
    graphs = LlamaGraphs(_tiny_llama(), "float32")
    params = {n: np.zeros(v.type.shape, np.float32) for n, v in graphs.prefill_graph(1, 4).parameters.items()}
    CausalLM(graphs, params).warmup(1, 4, 4)
    fresh = LlamaGraphs(_tiny_llama(), "float32")
    monkeypatch.setattr(LlamaGraphs, "prefill_graph", lambda *a, **k: pytest.fail("built a prefill graph"))
    monkeypatch.setattr(LlamaGraphs, "decode_graph", lambda *a, **k: pytest.fail("built a decode graph"))
    model = CausalLM(fresh, params)
    model.warmup(1, 4, 4)
    assert [cg.report.cache for _, cg in model._compiled.items()] == ["hit", "hit"]
