"""`kiln inspect`: the report API and the command-line entry point."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

import kiln
from kiln.inspect import format_report, inspect_graph, inspect_main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import llama_primitive_graph as L


def test_inspect_reports_every_section():
    g = L.build(L.TINY, seq=4)
    r = inspect_graph(g)
    assert r.nodes_before == len(g.compute_nodes()) and r.nodes_after < r.nodes_before
    assert r.fusions["attention"] == L.TINY.layers and r.fusions["sibling_matmuls"] == 2 * L.TINY.layers
    assert r.rule_matches["rms_norm"] == 2 * L.TINY.layers + 1
    assert r.kernels["matmul"] == 4 * L.TINY.layers + 1
    assert 0 < r.peak_bytes_planned < r.peak_bytes_unplanned
    for stage in ("verify", "classic_passes", "translate", "saturate", "extract", "rebuild", "plan"):
        assert r.cold_stage_seconds[stage] >= 0   # (stage_seconds are the cache lookup's on a hit)
    text = format_report(r, g.name)
    for piece in ("nodes: ", "fusions applied:", "attention", "kernels: ", "peak memory: ", "compile time: "):
        assert piece in text
    plain = inspect_graph(g, optimize=False)
    assert plain.fusions == {} and plain.nodes_after == plain.nodes_before and not plain.optimized


def test_inspect_main_reads_a_saved_graph(tmp_path, capsys):
    path = tmp_path / "llama.json"
    kiln.save_graph(L.build(L.TINY, seq=4), path)
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "graph: llama_primitive" in out and "sibling_matmuls" in out
    assert inspect_main([str(path), "--json", "--exclude-rule", "attention"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "attention" not in data["fusions"] and data["nodes_after"] < data["nodes_before"]
    assert data["peak_bytes_planned"] < data["peak_bytes_unplanned"]


def test_inspect_main_names_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert inspect_main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_inspect_a_checkpoint_through_the_cli_namespace(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    assert inspect_main(argparse.Namespace(target=str(tmp_path), device="cpu")) == 0
    out = capsys.readouterr().out
    assert out.count("graph: llama_prefill") == 1 and out.count("graph: llama_decode") == 1
    assert "rms_norm+linear" in out and "linear+swiglu" in out


def test_inspect_reports_cold_and_warm_compile_times(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))   # an empty compile cache: cold first
    path = tmp_path / "llama.json"
    kiln.save_graph(L.build(L.TINY, seq=3), path)
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "ms cold (" in out and "saturate" in out and "compile cache: miss" in out
    assert "warm, a second compile read from the compile cache:" in out and "cache_load" in out
    assert inspect_main([str(path), "--json"]) == 0                 # now a hit: warm, with the cold stages kept
    data = json.loads(capsys.readouterr().out)
    assert data["cache"] == "hit" and set(data["stage_seconds"]) == {"cache_key", "cache_load"}
    assert "saturate" in data["cold_stage_seconds"] and data["cold_seconds"] > data["total_seconds"]
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "ms warm (plan from the compile cache" in out and "cold, when the entry was made:" in out
