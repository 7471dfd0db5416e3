"""Background compile workers (`compile_workers.py`): forked processes compile a Program's distinct
kernels into Triton's disk cache, so the parent's own pass later compiles nothing.

On this machine (no GPU) the kernels are compiled for real, for an sm_90 target, with the
compile-only driver, in a fresh process without TRITON_INTERPRET (bench/compile_only_target.py
binds the executor over CPU buffers). On a GPU the whole path runs: workers at the executor's
construction, the first run skipping the in-process pass, results equal to a run without workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent

_CHILD_SM90 = """
import json, os, sys
import compile_only_target as C
from kiln.api import reference_evaluate
from kiln.backends.triton import compile_workers, precompile as pc
from kiln.compile import compile_graph
from kiln.models.llama import LlamaGraphs
import test_triton_precompile as t

C.install()
g = LlamaGraphs(t.TINY, "bfloat16").prefill_graph(1, 4, last_only=True, cache_len=8)
plan, _ = compile_graph(g, device="cuda", evaluate=reference_evaluate)
ex = C.executor(plan)
cache = os.environ["TRITON_CACHE_DIR"]
entries = lambda: len(os.listdir(cache)) if os.path.isdir(cache) else 0
workers = compile_workers.start(ex.program.launches, ex.calls, workers=int(sys.argv[1]))
st = workers.wait() if workers is not None else None
after_workers = entries()
serial = pc.precompile(ex.program.launches, ex.calls, 2, mode="serial")   # the parent's own pass
print("RESULT " + json.dumps(dict(stats=vars(st) if st else None, complete=bool(st and st.complete),
                                  after_workers=after_workers, after_parent=entries(), error=serial.error)))
"""


def _child(code: str, args: list[str], tmp_path, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ.update(TRITON_CACHE_DIR=str(tmp_path / "triton"), KILN_CACHE_DIR=str(tmp_path / "kiln"),
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), str(ROOT / "bench"),
                                               os.environ.get("PYTHONPATH", "")]), **env)
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=600)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="compile workers are forked")
def test_workers_leave_the_parent_nothing_to_compile(tmp_path):
    """Two workers compile every distinct kernel of a tiny prefill for sm_90; the parent's serial
    pass afterwards adds nothing to Triton's cache (each kernel is a disk hit)."""
    r = _child(_CHILD_SM90, ["2"], tmp_path)
    st = r["stats"]
    assert r["complete"] and st["workers"] == 2 and st["distinct"] > 2, r
    assert st["failed"] == st["killed"] == st["left"] == 0, r
    assert r["after_workers"] >= st["distinct"] and r["after_parent"] == r["after_workers"], r
    assert r["error"] is None, r


def test_workers_are_off_under_the_interpreter_and_when_asked(monkeypatch):
    from kiln.backends.triton import compile_workers
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not compile_workers.enabled()
    assert compile_workers.start([], [], workers=4) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("KILN_COMPILE_WORKERS", "0")
    assert not compile_workers.enabled()


_CHILD_GPU = """
import json
import numpy as np
import test_triton_precompile as t

plan, params, feeds = t.tiny_prefill()
out, _, ex = t._run_plain(plan, params, feeds)
ws, pre = ex.stats()["compile_workers"], ex.stats()["precompile"]
import os
os.environ["KILN_COMPILE_WORKERS"] = "0"
ref, _, ref_ex = t._run_plain(plan, params, feeds)
same = all(np.array_equal(out[n], ref[n]) for n in ref)
print("RESULT " + json.dumps(dict(workers=ws, mode=pre["mode"], same=same,
                                  ref_workers=ref_ex.stats()["compile_workers"])))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the executor starts workers on a GPU only")
def test_an_executor_on_the_gpu_compiles_in_workers_and_runs_the_same(tmp_path):
    """In a fresh process with empty caches: the executor's workers compile every kernel (the first
    run skips the in-process pass) and the outputs equal those of an executor without workers."""
    if (os.cpu_count() or 1) < 3:
        pytest.skip("workers need three cores or more")
    r = _child(_CHILD_GPU, [], tmp_path)
    assert r["workers"] and r["workers"]["failed"] == r["workers"]["killed"] == 0, r
    assert r["mode"] == "workers" and r["same"] and r["ref_workers"] is None, r


def test_host_stand_ins_keep_what_triton_specializes_on():
    """A worker compiles over CPU stand-ins of the launch's GPU tensors (meta tensors here): same
    dtype, sizes and strides, 16-byte aligned like the original; CPU tensors and other values pass."""
    from kiln.backends.triton.compile_workers import _on_host
    base = torch.empty(4, 8, 6, dtype=torch.bfloat16, device="meta")
    view = base.transpose(1, 2)[:, 1:]
    cpu = torch.zeros(3)
    out = _on_host([(view, 3), cpu, "x"])
    got = out[0][0]
    assert got.device.type == "cpu" and got.dtype == view.dtype
    assert tuple(got.shape) == tuple(view.shape) and got.stride() == view.stride()
    assert got.data_ptr() % 16 == view.data_ptr() % 16 and out[0][1] == 3 and out[1] is cpu and out[2] == "x"
