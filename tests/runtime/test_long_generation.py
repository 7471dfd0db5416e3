"""Long greedy generation against HF: 4,096 tokens of a tiny Llama, and a Mistral-style sliding
window far past its width, every token compared; the cache filled exactly to its last slot.

Weights are re-drawn N(0, 1/fan_in) with noisy norms, so attention is far from uniform and a
bookkeeping error (a wrong slot, mask or window edge) changes the tokens."""

import numpy as np
import pytest

import kiln

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def _redraw(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 2.0)
    return model


def _save(tmp_path, cls, cfg, seed):
    model = _redraw(cls(cfg).eval(), seed)
    model.save_pretrained(tmp_path)
    return model


def _hf_greedy(model, prompt, new):
    with torch.no_grad():
        out = model.generate(torch.from_numpy(prompt), max_new_tokens=new, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=new)
    return out.numpy()


def test_4096_greedy_tokens_match_hf(tmp_path):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096,
                                   rope_theta=10000.0)
    hf = _save(tmp_path, transformers.LlamaForCausalLM, cfg, seed=1)
    prompt = np.random.default_rng(0).integers(0, 256, (1, 7))
    want = _hf_greedy(hf, prompt, 4096 - 7)
    model = kiln.load(tmp_path)
    got = model.generate(prompt, max_new_tokens=4096 - 7, eos_token_id=[])
    assert got.shape == want.shape == (1, 4096)
    first = np.flatnonzero(got[0] != want[0])
    assert not first.size, f"first difference at token {first[0]} of 4096"


def test_sliding_window_far_past_its_width_and_a_full_cache(tmp_path):
    """Mistral with a 16-token window over 190 tokens; the cache (192 slots) ends exactly full."""
    cfg = transformers.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                     max_position_embeddings=4096, sliding_window=16, head_dim=8)
    hf = _save(tmp_path, transformers.MistralForCausalLM, cfg, seed=2)
    prompt = np.random.default_rng(1).integers(0, 128, (2, 5))
    new = 192 - 5                                  # fills the 192-slot cache to its last slot
    want = _hf_greedy(hf, prompt, new)
    model = kiln.load(tmp_path)
    assert model.cache_length(5 + new) == 5 + new
    got = model.generate(prompt, max_new_tokens=new, eos_token_id=[])
    np.testing.assert_array_equal(got, want)
