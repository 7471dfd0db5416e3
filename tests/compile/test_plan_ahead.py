"""Planning ahead (`kiln/compile/plan_ahead.py`): a warm-up's later graphs plan in forked processes
and reach the parent through the compile cache; generation is unchanged.

Each run is a fresh Python process (a process that has loaded egglog never forks a planner) with its
own empty KILN_CACHE_DIR."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys
import numpy as np
from kiln.models.llama import LlamaConfig, LlamaGraphs
from kiln.runtime.language_model import CausalLM

cfg = LlamaConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
graphs = LlamaGraphs(cfg, "float32")
rng = np.random.default_rng(0)
types = {n: v.type for n, v in graphs.prefill_graph(1, 8).parameters.items()}
params = {n: (rng.standard_normal(t.shape) / np.sqrt(t.shape[-1])).astype(np.float32) for n, t in types.items()}
model = CausalLM(graphs, params, device="cpu")
model.warmup(1, 8, 6, select="greedy")
caches = [cg.report.cache for _, cg in model._compiled.items()]
ids = rng.integers(0, 64, (1, 8))
out = model.generate(ids, max_new_tokens=6, eos_token_id=[])
print("RESULT " + json.dumps(dict(caches=caches, compiles=model.compiles, tokens=np.asarray(out).tolist())))
"""


def _run(tmp_path, name: str, **env) -> dict:
    environ = dict(os.environ, KILN_CACHE_DIR=str(tmp_path / name), **env)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=300)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.skipif(not hasattr(os, "fork") or (os.cpu_count() or 1) < 2, reason="plans ahead in a forked process")
def test_the_decode_graph_is_planned_ahead_and_generation_is_unchanged(tmp_path):
    ahead = _run(tmp_path, "ahead")
    alone = _run(tmp_path, "alone", KILN_PLAN_AHEAD="0")
    assert ahead["caches"] == ["miss", "ahead"], ahead
    assert alone["caches"] == ["miss", "miss"], alone
    assert ahead["compiles"] == alone["compiles"] == 2
    assert ahead["tokens"] == alone["tokens"]


def test_plan_ahead_is_off_once_egglog_is_loaded(monkeypatch):
    """This process has egglog loaded (or may): a fork would copy its runtime without its thread."""
    from kiln.compile import plan_ahead
    import egglog  # noqa: F401
    assert not plan_ahead.possible()
    assert not plan_ahead.PlanAhead([object()], device="cpu").pids
