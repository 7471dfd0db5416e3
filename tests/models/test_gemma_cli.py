"""`kiln run` and `kiln inspect` on a tiny Gemma 3 checkpoint with a tokenizer, and device="cuda" (gpu)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemma_checkpoints import save
from llama_checkpoints import train_tokenizer

import kiln
from kiln.cli import main

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tok = train_tokenizer(300)
    d = tmp_path_factory.mktemp("gemma3_text")
    ck = save(d, "gemma3", seed=9, vocab_size=300, bos_token_id=tok.bos_token_id, eos_token_id=None,
              pad_token_id=tok.pad_token_id)
    tok.save_pretrained(d)
    return ck, tok


def test_kiln_run_prints_hf_greedy_continuation(checkpoint, capsys):
    ck, tok = checkpoint
    assert main(["run", str(ck.path), "--prompt", PROMPT, "--max-new-tokens", "10"]) == 0
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = ck.hf.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    want = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert want.strip() and want.strip() in capsys.readouterr().out


def test_kiln_inspect_reports_the_gemma_graphs(checkpoint, capsys):
    ck, _ = checkpoint
    assert main(["inspect", str(ck.path)]) == 0
    out = capsys.readouterr().out
    assert "gemma3_text_prefill" in out and "gemma3_text_decode" in out


@pytest.mark.gpu
def test_cuda_greedy_tokens_equal_cpu(checkpoint):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    ck, _ = checkpoint
    ids = np.random.default_rng(0).integers(0, 300, (2, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    cpu = kiln.load(ck.path).generate(ids, mask, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    gpu_model = kiln.load(ck.path, device="cuda")
    np.testing.assert_array_equal(gpu_model.generate(ids, mask, max_new_tokens=24, min_new_tokens=24,
                                                     do_sample=False), cpu)
    np.testing.assert_allclose(gpu_model(ids), kiln.load(ck.path)(ids), atol=1e-3, rtol=0)
