"""Which Triton binaries a plan's kernels are, remembered across processes (`kernels_on_disk.py`).

Compiled for real for an sm_90 target (no GPU needed), each run a fresh process without
TRITON_INTERPRET sharing one pair of cache directories: the recorder sees every kernel's cache
files, whether Triton compiled it or read it back, and the record holds while every file is there."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_triton_compile_workers import _child  # noqa: E402

_CHILD = """
import json
import compile_only_target as C
from kiln.api import reference_evaluate
from kiln.backends.triton import kernels_on_disk as K, precompile as pc
from kiln.compile import compile_graph
from kiln.models.llama import LlamaGraphs
import test_triton_precompile as t

C.install()
g = LlamaGraphs(t.TINY, "bfloat16").decode_graph(1, 16)
plan, report = compile_graph(g, device="cuda", evaluate=reference_evaluate)
ex = C.executor(plan)
before = K.on_disk(report.cache_key)
with K.Recorder() as rec:
    pc.precompile(ex.program.launches, ex.calls, 2, mode="serial")
if not before:
    K.store(report.cache_key, rec.seen)
print("RESULT " + json.dumps(dict(before=before, after=K.on_disk(report.cache_key), key=report.cache_key,
                                  files=sorted(rec.seen))))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="compiles for sm_90 with the wheel's ptxas")
def test_a_plans_binaries_are_remembered_until_one_goes_missing(tmp_path):
    cold = _child(_CHILD, [], tmp_path)
    assert not cold["before"] and cold["after"] and cold["files"], cold
    assert all(f.startswith(str(tmp_path / "triton")) for f in cold["files"])
    warm = _child(_CHILD, [], tmp_path)          # a second process: every kernel read from Triton's cache
    assert warm["before"] and warm["files"] == cold["files"], warm
    os.remove(cold["files"][0])
    again = _child(_CHILD, [], tmp_path)
    assert not again["before"], again


def test_nothing_is_remembered_without_binaries(tmp_path, monkeypatch):
    from kiln.backends.triton import kernels_on_disk as K
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    K.store("k", set())
    assert not K.on_disk("k") and not K.on_disk("never stored")
