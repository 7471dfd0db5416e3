"""kiln's logits processors and sampler against HF transformers' own processors and `generate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.runtime.generation import _sample
from kiln.runtime.logits_processors import (MinNewTokens, RepetitionPenalty, Temperature, TopK, TopP,
                                            apply_processors, build_processors, softmax)

transformers = pytest.importorskip("transformers")
lp = pytest.importorskip("transformers.generation.logits_process")


def hf_apply(proc, ids, scores):
    return proc(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()


@pytest.fixture
def batch(rng):
    scores = (rng.standard_normal((3, 50)) * 3).astype(np.float32)
    scores[1, 7] = scores[1, 9] = scores[1].max() + 1  # a tie at the top
    ids = rng.integers(0, 50, size=(3, 12))
    return ids, scores


def test_repetition_penalty_matches_hf_with_left_padding(batch):
    ids, scores = batch
    pad = np.array([0, 4, 2])
    ours = RepetitionPenalty(1.3, pad)(ids, scores)
    ref = hf_apply(lp.RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=torch.from_numpy(pad)), ids, scores)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("top_k", [1, 2, 5, 50, 80])
def test_top_k_matches_hf(batch, top_k):
    ids, scores = batch
    np.testing.assert_array_equal(TopK(top_k)(ids, scores), hf_apply(lp.TopKLogitsWarper(top_k), ids, scores))


@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.9, 0.99, 1.0])
def test_top_p_matches_hf(batch, top_p):
    ids, scores = batch
    scores[1, 9] -= 0.5  # no ties: torch.sort orders equal logits arbitrarily, so HF keeps either one
    np.testing.assert_array_equal(TopP(top_p)(ids, scores), hf_apply(lp.TopPLogitsWarper(top_p), ids, scores))


def test_temperature_and_min_new_tokens_match_hf(batch):
    ids, scores = batch
    np.testing.assert_allclose(Temperature(0.7)(ids, scores), hf_apply(lp.TemperatureLogitsWarper(0.7), ids, scores),
                               rtol=1e-6)
    for prompt_len in (8, 11):  # 4 and 1 new tokens so far
        ours = MinNewTokens(prompt_len, 3, [5, 6])(ids, scores)
        ref = hf_apply(lp.MinNewTokensLengthLogitsProcessor(prompt_len, 3, [5, 6]), ids, scores)
        np.testing.assert_array_equal(ours, ref)


def test_invalid_settings_raise():
    for make in (lambda: Temperature(0.0), lambda: TopK(0), lambda: TopP(1.5), lambda: RepetitionPenalty(-1.0)):
        with pytest.raises(ValueError):
            make()


def test_processor_order_matches_hf_generate():
    """Replay HF's sampling run: kiln's processors on HF's raw logits give HF's processed scores."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, initializer_range=0.5,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([[5, 9, 11, 3, 5, 40], [0, 0, 7, 8, 9, 10]])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    settings = dict(temperature=0.8, top_k=20, top_p=0.85, repetition_penalty=1.2)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=6, min_new_tokens=0,
                          output_scores=True, output_logits=True, return_dict_in_generate=True, **settings)
    procs = build_processors(do_sample=True, min_new_tokens=None, eos_token_ids=[], prompt_length=6,
                             padding_lengths=np.array([0, 2]), **settings)
    assert [type(p).__name__ for p in procs] == ["RepetitionPenalty", "Temperature", "TopK", "TopP"]
    seq = out.sequences.numpy()
    for t, (raw, ref) in enumerate(zip(out.logits, out.scores)):
        ours = apply_processors(procs, seq[:, :6 + t], raw.numpy())
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6, atol=1e-6)


def test_sampler_draws_from_the_distribution():
    rng = np.random.default_rng(0)
    probs = np.array([[0.5, 0.0, 0.3, 0.2, 0.0]] * 20000, np.float32)
    draws = _sample(probs, rng)
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert freq[1] == 0 and freq[4] == 0
    np.testing.assert_allclose(freq, probs[0], atol=0.015)
    one_hot = softmax(np.array([[-np.inf, 2.0, -np.inf]], np.float32))
    assert _sample(one_hot, rng).tolist() == [1]
