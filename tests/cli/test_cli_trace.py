"""Kernel traces (kiln.runtime.trace, `kiln run --trace`): a Trace Event Format file with one
complete event per launch, counted against the Plan's kernels, on the NumPy executor, the
Triton executor (interpreted on a CPU; device times on a GPU) and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.ir import Graph
from kiln.runtime import trace

from cli_helpers import run_kiln

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))   # tiny checkpoints with a tokenizer


def _small_graph() -> Graph:
    """A matmul, a softmax, a pointwise chain and a state update: kernels of several archetypes."""
    g = Graph("traced")
    x = g.input("x", (4, 8))
    w = g.parameter("w", (8, 8))
    total = g.state("total", (4, 8))
    h = g.softmax(g.linear(x, w))
    y = g.tanh(h * g.scalar(2.0)) + x
    g.assign(total, total + y)
    g.output("y", y)
    return g


def check_trace_format(doc: dict) -> list[dict]:
    """The Trace Event Format's rules that viewers rely on; returns the kernel events."""
    assert set(doc) >= {"traceEvents"} and isinstance(doc["traceEvents"], list)
    for e in doc["traceEvents"]:
        assert e["ph"] in ("X", "M") and isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        if e["ph"] == "X":
            assert isinstance(e["name"], str) and e["ts"] >= 0 and e["dur"] >= 0, e
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    tracks: dict[tuple, list] = {}
    for e in kernels:
        tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():                       # events on one track never overlap
        spans.sort()
        assert all(a[1] <= b[0] + 1e-3 for a, b in zip(spans, spans[1:]))
    return kernels


def test_numpy_runs_give_one_event_per_plan_kernel(tmp_path):
    cg = kiln.compile(_small_graph())
    cg.load_params({"w": np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)})
    x = np.ones((4, 8), np.float32)
    cg.run(x=x)                                         # untraced: binds, records nothing
    path = tmp_path / "trace.json"
    with trace.tracing(path) as t:
        for _ in range(3):
            cg.run(x=x)
    assert t.runs == 3 and trace.active() is None
    kernels = check_trace_format(json.loads(path.read_text()))
    plan = cg.plan
    assert len(plan.kernels) >= 3
    assert len(kernels) == 3 * len(plan.kernels)
    want = ["+".join(plan.steps[j].op for j in k.steps) for k in plan.kernels]
    assert sorted(e["name"] for e in kernels) == sorted(want * 3)
    assert {e["args"]["archetype"] for e in kernels} == {k.archetype for k in plan.kernels}
    runs = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("cat") == "run"]
    assert [r["args"]["launches"] for r in runs] == [len(plan.kernels)] * 3

    cg.run(x=x)                                         # off again: the executor has no tracer
    assert cg.executor.tracer is None


def test_nested_tracing_is_refused():
    with trace.tracing():
        with pytest.raises(RuntimeError, match="already being recorded"):
            with trace.tracing():
                pass


_TRITON_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[2])
    from test_cli_trace import _small_graph, check_trace_format
    import kiln
    from kiln.runtime import trace
    cg = kiln.compile(_small_graph(), device="cuda")   # interpreted on a CPU (TRITON_INTERPRET=1)
    cg.load_params({"w": np.ones((8, 8), np.float32) / 8})
    x = np.ones((4, 8), np.float32)
    with trace.tracing(sys.argv[1]):
        cg.run(x=x)                                      # the first run compiles as it launches
        cg.run(x=x)
    kernels = check_trace_format(json.load(open(sys.argv[1])))
    launches = cg.executor.program.launches
    assert len(kernels) == 2 * len(launches), (len(kernels), len(launches))
    assert len(launches) >= len(cg.plan.kernels)
    assert sorted(e["name"] for e in kernels) == sorted([l.label for l in launches] * 2)
    clock = {e["args"]["clock"] for e in kernels}
    assert clock == ({"device"} if torch.cuda.is_available() else {"host"}), clock
    print("ok", len(kernels))
""")


def _run_triton_script(tmp_path: Path, interpret: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_CACHE_DIR=str(tmp_path / "kernels"))
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, str(tmp_path / "t.json"), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_triton_launches_are_traced_interpreted(tmp_path):
    pytest.importorskip("triton")
    res = _run_triton_script(tmp_path, interpret=True)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


@pytest.mark.gpu
def test_triton_launches_carry_device_times_from_cuda_events(tmp_path):
    res = _run_triton_script(tmp_path, interpret=False)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


@pytest.fixture(scope="module")
def text_llama(tmp_path_factory):
    from llama_checkpoints import save_checkpoint, train_tokenizer

    tok = train_tokenizer(300)
    d = tmp_path_factory.mktemp("trace_llama")
    save_checkpoint(d, "llama3", seed=3, vocab_size=300, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tok.save_pretrained(d)
    return d


def test_kiln_run_trace_writes_every_launch_of_the_generation(text_llama, tmp_path):
    out = tmp_path / "run.json"
    res = run_kiln("run", str(text_llama), "--prompt", "Hello world", "--max-new-tokens", "4", "--trace", str(out),
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    kernels = check_trace_format(doc)
    runs = [e for e in doc["traceEvents"] if e.get("cat") == "run"]
    assert len(runs) >= 4                               # a prefill and the decode steps
    assert sum(r["args"]["launches"] for r in runs) == len(kernels)
    graphs = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert any("prefill" in g for g in graphs) and any("decode" in g for g in graphs)
    assert f"kernel launches in {len(runs)} runs written to {out}" in res.stderr


def test_kiln_run_trace_into_a_missing_directory_is_one_line(workdir, tmp_path):
    res = run_kiln("run", str(workdir / "llama"), "--prompt", "hi", "--trace", str(tmp_path / "no" / "t.json"),
                   cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "--trace" in res.stderr and "does not exist" in res.stderr
