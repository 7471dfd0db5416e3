"""The concurrent compile pass before a graph's first run (`precompile.py`): in every mode it leaves
results and buffers untouched; a failing compile is left to the eager pass and does not break later
passes. Under TRITON_INTERPRET=1 `warmup` compiles nothing (Triton's interpreter returns at once), so
these tests check the pass's code path, not its speed: that is `bench/compile_time.py --device cuda`
(on the GPU) or `--device sm90` (kernels compiled for an H100/H200 target without one)."""

import numpy as np
import pytest
import torch

from kiln.api import reference_evaluate
from kiln.backends.triton import TritonExecutor
from kiln.backends.triton import precompile as pc
from kiln.compile import compile_graph
from kiln.models.llama import LlamaConfig, LlamaGraphs
from kiln.runtime.compiled_graph import CompiledGraph

TINY = LlamaConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def prefill():
    return tiny_prefill()


def tiny_prefill():
    g = LlamaGraphs(TINY, "float32").prefill_graph(1, 4, last_only=True, cache_len=8)
    plan, report = compile_graph(g, evaluate=reference_evaluate)
    rng = np.random.default_rng(0)
    params = {n: (0.2 * rng.standard_normal(t.shape)).astype(np.float32) for n, (_, t) in plan.params.items()}
    feeds = dict(input_ids=rng.integers(0, 64, (1, 4)), attention_mask=np.ones((1, 4), np.int64),
                 position_ids=np.arange(4)[None])
    return plan, params, feeds


def _run(plan, params, feeds, monkeypatch, threads, mode=None):
    monkeypatch.setenv("KILN_COMPILE_THREADS", str(threads))
    monkeypatch.setenv("KILN_COMPILE_WORKERS", "0")   # on a GPU they would compile first: the pass is skipped
    if mode is not None:
        real = pc.precompile
        monkeypatch.setattr("kiln.backends.triton.executor.precompile",
                            lambda launches, calls, **kw: real(launches, calls, threads, mode=mode, **kw))
    return _run_plain(plan, params, feeds)


def _run_plain(plan, params, feeds):
    cg = CompiledGraph(plan, TritonExecutor(plan), "cuda")
    cg.load_params(params)
    out = cg.run(**feeds)
    states = {n: cg.get_state(n) for n in cg.state_types}
    return out, states, cg.executor


@pytest.mark.parametrize("mode", ["async", "threads", "serial"])
def test_the_precompile_pass_does_not_change_results(prefill, monkeypatch, mode):
    plan, params, feeds = prefill
    ref, ref_states, off = _run(plan, params, feeds, monkeypatch, threads=0)
    assert off.precompile_stats.mode == "off" and off.precompile_stats.launches == 0
    out, states, ex = _run(plan, params, feeds, monkeypatch, threads=2, mode=mode)
    st = ex.precompile_stats
    compiled = [l for l in ex.program.launches if l.archetype not in pc.SKIPPED_ARCHETYPES]
    assert (st.mode, st.error, st.launches) == (mode, None, len(compiled)) and compiled
    assert ex.stats()["precompile"]["mode"] == mode
    for name in ref:
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
    for name in ref_states:
        np.testing.assert_array_equal(states[name], ref_states[name], err_msg=name)


def test_compile_only_launches_write_nothing(prefill):
    """Every launcher in compile-only mode leaves arenas, states and scratch as they were (a launcher
    that computed there would change the eager run that follows)."""
    plan, params, _ = prefill
    ex = TritonExecutor(plan)
    ex.params_changed({plan.params[n][0]: v for n, v in params.items()})
    buffers = [*ex.arenas.values(), *ex.state.values(), *ex._persistent.values()]
    for b in buffers:
        b.view(torch.uint8).fill_(0x5A) if b.dtype != torch.bool else b.fill_(True)
    before = [b.clone() for b in buffers]
    st = pc.precompile(ex.program.launches, ex.calls, 2, mode="serial")
    assert st.error is None and st.launches > 0
    for a, b in zip(before, buffers):
        assert torch.equal(a, b)


_READY_CHILD = """
import json, sys
import numpy as np
from kiln.backends.triton import precompile as pc
import kiln.backends.triton.executor as executor_module
import test_triton_precompile as t

plan, params, feeds = t.tiny_prefill()
real, mode = pc.precompile, sys.argv[1]
executor_module.precompile = lambda launches, calls, **kw: real(launches, calls, 2, mode=mode, **kw)
out, _, ex = t._run_plain(plan, params, feeds)
st = ex.precompile_stats
executor_module.precompile = lambda launches, calls, **kw: real(launches, calls, 0, **kw)
ref, _, _ = t._run_plain(plan, params, feeds)
same = all(np.array_equal(out[n], ref[n]) for n in ref)
print("RESULT " + json.dumps(dict(error=st.error, loaded=st.loaded, load_seconds=st.load_seconds, same=same)))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="loads binaries onto a GPU")
@pytest.mark.parametrize("mode", ["async", "threads"])
def test_precompile_readies_every_distinct_kernel_for_its_first_launch(mode, tmp_path):
    """On a GPU the pass also loads each compiled kernel (and builds its launcher) over the pool, so
    the eager run that follows finds them ready; results stay those of a run without the pass. In a
    fresh process with empty kernel caches: in this one earlier tests have loaded the kernels already."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"), "KILN_CACHE_DIR": str(tmp_path / "kiln"),
           "KILN_COMPILE_WORKERS": "0",   # else the executor's workers compile first and the pass is skipped
           "PYTHONPATH": os.pathsep.join([str(root), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _READY_CHILD, mode], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    st = json.loads(lines[-1][len("RESULT "):])
    assert st["error"] is None and st["loaded"] > 0 and st["load_seconds"] > 0 and st["same"], st


def test_compile_only_collects_what_each_launch_compiled(prefill):
    """compile_only(list) gathers each compile-only launch's result (what `load` readies); in the
    interpreter Triton compiles nothing, so the pass readies nothing and reports no error."""
    from kiln.backends.triton.kernels.launch import compile_only
    plan, params, _ = prefill
    ex = TritonExecutor(plan)
    got = []
    with compile_only(got):
        for launch, (fn, args) in zip(ex.program.launches, ex.calls):
            if launch.archetype not in pc.SKIPPED_ARCHETYPES:
                fn(*args)
    assert len(got) >= sum(l.archetype not in pc.SKIPPED_ARCHETYPES for l in ex.program.launches) > 0
    st = pc.precompile(ex.program.launches, ex.calls, 2, mode="serial", load=True)
    assert st.error is None and st.launches > 0
    if not torch.cuda.is_available():
        assert st.loaded == 0


class _Launch:
    def __init__(self, archetype="pointwise"):
        self.archetype = archetype


def test_a_failing_compile_is_reported_and_later_passes_still_run():
    def broken():
        raise RuntimeError("simulated compile failure")

    ran = []
    for mode in ("async", "threads", "serial"):
        st = pc.precompile([_Launch()], [(broken, ())], 2, mode=mode)
        assert st.error == "RuntimeError: simulated compile failure", mode
        st = pc.precompile([_Launch(), _Launch("fallback")], [(lambda: ran.append(mode), ()), (broken, ())], 2,
                           mode=mode)
        assert st.error is None and st.launches == 1, mode   # fallback launches are not run
    assert ran == ["async", "threads", "serial"]


def test_compile_threads_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("KILN_COMPILE_THREADS", "3")
    assert pc.compile_threads() == 3
    monkeypatch.setenv("KILN_COMPILE_THREADS", "many")
    with pytest.raises(ValueError, match="KILN_COMPILE_THREADS"):
        pc.compile_threads()
    monkeypatch.delenv("KILN_COMPILE_THREADS")
    assert 1 <= pc.compile_threads() <= 16
    assert pc.precompile([_Launch()], [(lambda: None, ())], 1).mode == "off"   # one thread: no pass


def test_triton_key_is_remembered_on_disk_until_triton_changes(tmp_path, monkeypatch):
    """The memo returns Triton's own hash, read from disk in a later process (here: a fresh install),
    and a changed installation (another signature) computes it again."""
    import triton.runtime.cache as tc

    from kiln.backends.triton import triton_key as tk

    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    original, real_signature = tc.triton_key, tk._signature
    calls = []

    def counted():
        calls.append(1)
        return original()

    for signature in ("a", "a", "b"):
        monkeypatch.setattr(tc, "triton_key", counted)
        monkeypatch.setattr(tk, "_signature", lambda _: signature)
        assert tk.install() and tc.triton_key is not counted
        assert tc.triton_key() == original() and tc.triton_key() == original()
    assert len(calls) == 2                                     # "a" once (then read back), "b" once
    assert sorted(p.name for p in (tmp_path / "triton_key").iterdir()) == ["a", "b"]
    monkeypatch.setenv("KILN_TRITON_KEY_CACHE", "0")
    monkeypatch.setattr(tc, "triton_key", counted)
    assert not tk.install() and tc.triton_key is counted
    assert len(real_signature(tc)) == 32 and real_signature(tc) == real_signature(tc)   # stats of Triton's files
