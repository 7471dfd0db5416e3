"""`kiln inspect --dispatch`: which backend kernel runs each op (generated, library, fallback).

The graph forces each kind: a small matmul (a generated Triton GEMM), a large one (cuBLAS),
a softmax over the first axis and a pad (torch fallbacks on the GPU; pad is the NumPy
reference kernel plus a copy on the CPU) and an average pool (the host fallback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kiln
from kiln.inspect import dispatch_report, format_dispatch, inspect_main
from kiln.ir import Graph

# triton is imported only inside the tests: Triton >= 3.7 reads TRITON_INTERPRET when it is first imported,
# and tests/triton/conftest.py sets it (on a machine without a GPU) after this module is collected.


def _cuda_report():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from kiln.backends.triton.device import interpreting

    # under the interpreter (no GPU) the big product is a Triton GEMM too: cuBLAS cannot run there
    return dispatch_report(_graph(), device="cuda", optimize=False), 0 if interpreting() else 1


def _graph() -> Graph:
    g = Graph("forced")
    x = g.input("x", (4, 8))
    big = g.input("big", (256, 8))
    w = g.parameter("w", (8, 8))
    y = g.softmax(g.linear(x, w), axis=0)                            # generated GEMM, softmax over axis 0
    y = g.pad(y, pads=[[1, 1], [0, 0]])                              # [6, 8]
    pooled = g.avg_pool2d(g.reshape(y, shape=[1, 1, 6, 8]), kernel_size=2)
    g.output("pooled", pooled)
    g.output("wide", g.linear(big, w))                               # M = 256: cuBLAS
    return g


def _by_op(report: dict) -> dict[str, dict]:
    return {"+".join(r["ops"]): r for r in report["launches"]}


def test_cuda_dispatch_names_generated_library_and_forced_fallbacks():
    report, library = _cuda_report()
    rows = _by_op(report)
    linear = [(r["kind"], r["kernel"]) for r in report["launches"] if r["ops"] == ["linear"]]
    big = ("library", "CublasMatmul (cuBLAS via torch)") if library else ("generated", "Triton Matmul")
    assert linear == [("generated", "Triton Gemv"), big]      # 4 rows stream the weight; 256 rows do not
    assert rows["softmax"]["kind"] == "fallback" and rows["softmax"]["label"] == "softmax [torch]"
    assert rows["pad"]["kernel"] == "TorchLaunch (torch op on the GPU)"
    assert rows["avg_pool2d"]["kernel"] == "HostLaunch (NumPy reference kernel on the host)"
    assert report["kinds"] == {"generated": report["kinds"]["generated"], "fallback": 3,
                               **({"library": 1} if library else {})}
    text = format_dispatch(report)
    assert "fallbacks: avg_pool2d [host] x1, pad [torch] x1, softmax [torch] x1" in text


def test_cpu_dispatch_names_the_reference_fallback():
    report = dispatch_report(_graph(), device="cpu", optimize=False)
    rows = _by_op(report)
    assert {r["kernel"] for r in report["launches"] if r["ops"] == ["linear"]} == {"NumPy out= kernel"}
    assert rows["pad"]["kind"] == "fallback" and rows["pad"]["kernel"] == "reference kernel + copy: pad"
    # the report is what the executor does: its reference steps are the fallbacks listed
    cg = kiln.compile(_graph(), optimize=False)
    cg.load_params({"w": np.ones((8, 8), np.float32)})
    cg.run(x=np.ones((4, 8), np.float32), big=np.ones((256, 8), np.float32))
    listed = {op for r in report["launches"] for op, how in zip(r["ops"], r["impls"]) if how == "reference"}
    assert listed == set(cg.executor.reference_steps)


def test_kiln_inspect_dispatch_on_a_saved_graph(tmp_path, capsys):
    from kiln.cli import main

    path = tmp_path / "forced.json"
    kiln.save_graph(_graph(), path)
    _, library = _cuda_report()
    assert main(["inspect", str(path), "--dispatch", "--device", "cuda", "--no-optimize"]) == 0
    out = capsys.readouterr().out
    assert "dispatch on cuda:" in out and ("library 1" in out) == bool(library) and "fallback 3" in out
    assert "softmax [torch] x1" in out


def test_inspect_main_dispatch_json(tmp_path, capsys):
    path = tmp_path / "forced.json"
    kiln.save_graph(_graph(), path)
    assert inspect_main([str(path), "--dispatch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["kinds"]["fallback"] >= 1
