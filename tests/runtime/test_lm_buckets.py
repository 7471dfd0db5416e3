"""Shape buckets of decoder LMs (kiln.runtime.buckets in CausalLM) against HF transformers.

Prompts are left-padded to a length bucket and batches filled to a batch bucket; the padding
must be invisible (logits within 1e-4 of HF on the unpadded input, greedy tokens equal), a
stream of varied lengths must compile one graph per bucket, and the compile cache must stay
within its limit without losing a generation's KV cache.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import InputError
from kiln.runtime.buckets import GraphCache, ShapeBuckets

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def _redraw(model: torch.nn.Module, seed: int) -> None:
    """Weights far from HF's std-0.02 init, so attention is not near uniform and padding bugs show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint dir, HF model): a 2-layer Mistral (GQA, RoPE, a sliding window of 6)."""
    cfg = transformers.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=96,
                                     max_position_embeddings=256, sliding_window=6, bos_token_id=None,
                                     eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(cfg).eval()
    _redraw(hf, seed=1)
    path = tmp_path_factory.mktemp("bucket_lm")
    hf.save_pretrained(path)
    return path, hf


def _hf_logits(hf, ids, mask=None, embeds=None):
    with torch.no_grad():
        kw = {"inputs_embeds": torch.from_numpy(embeds)} if embeds is not None else {"input_ids": torch.from_numpy(ids)}
        return hf(attention_mask=None if mask is None else torch.from_numpy(mask), **kw).logits.numpy()


def _hf_generate(hf, ids, mask, new):
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                          max_new_tokens=new, output_logits=True, return_dict_in_generate=True)
    return out.sequences.numpy(), [x.numpy() for x in out.logits]


def _kinds(model) -> list[str]:
    return [key[0] for key in model._compiled]


def test_a_stream_of_50_prompt_lengths_compiles_one_graph_per_bucket(tiny):
    path, hf = tiny
    model = kiln.load(path)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 121, 50)
    for n in lengths:
        ids = rng.integers(0, 96, (1, int(n)))
        np.testing.assert_allclose(model(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)
    buckets = {model.buckets.length(int(n)) for n in lengths}
    assert buckets == {16, 32, 64, 128}
    assert model.compiles == len(buckets) == len(model._compiled)

    model.buckets = None                                  # exact shapes: one graph per new length
    ids = rng.integers(0, 96, (1, 7))
    np.testing.assert_allclose(model(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)
    assert ("forward", 1, 7, False, "logits") in model._compiled


def test_generations_of_varied_prompts_match_hf_and_share_bucket_graphs(tiny):
    path, hf = tiny
    model = kiln.load(path)
    rng = np.random.default_rng(1)
    for n in (3, 9, 14, 5, 16):                            # all in the 16 bucket
        ids = rng.integers(0, 96, (1, n))
        want, want_logits = _hf_generate(hf, ids, np.ones_like(ids), 6)
        out = model.generate(ids, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
        np.testing.assert_array_equal(out.sequences, want)
        assert max(np.abs(a - b).max() for a, b in zip(out.logits, want_logits)) < ATOL
        np.testing.assert_array_equal(model.generate(ids, max_new_tokens=6), want)   # greedy on the device path
    assert _kinds(model).count("prefill") == 2             # logits and greedy prefill, one bucket
    assert _kinds(model).count("decode") == 2


def test_batch_filled_to_a_bucket_with_features_matches_hf(tiny):
    """3 left-padded rows run as 4 (a copied row) and 11 columns as 16; features are padded too."""
    path, hf = tiny
    model = kiln.load(path)
    rng = np.random.default_rng(2)
    ids = rng.integers(3, 96, (3, 11))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    where = np.zeros(ids.shape, bool)
    where[:, 8:10] = True
    embeds = rng.standard_normal((3, 11, 32)).astype(np.float32)
    with torch.no_grad():
        merged = hf.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    merged[where] = embeds[where]
    got = model(ids, mask, features=(embeds, where))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], _hf_logits(hf, ids, mask, embeds=merged)[real], atol=ATOL, rtol=0)

    want, _ = _hf_generate(hf, ids, mask, 5)
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=5), want)
    assert ("prefill", 4, 16, model.cache_length(16 + 5), True, "greedy") in model._compiled
    assert ("decode", 3, model.cache_length(16 + 5), False, "logits") not in model._compiled


def test_the_compile_cache_is_bounded_and_keeps_a_generations_kv_cache(tiny):
    path, hf = tiny
    model = kiln.load(path)
    model._compiled = GraphCache(limit=2)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 96, (1, 5))
    want, want_logits = _hf_generate(hf, ids, np.ones_like(ids), 3)

    cache = model.new_cache(1, 5 + 3)
    pos = np.arange(5)[None]
    first = model.prefill(ids, np.ones_like(ids), pos, cache)
    prefill_graph = weakref.ref(next(iter(model._compiled.values())))
    for n in (20, 40):                                     # two forward buckets evict the prefill graph
        model(rng.integers(0, 96, (1, n)))
    gc.collect()
    assert len(model._compiled) == 2 and model._compiled.evictions == 1
    assert prefill_graph() is None                         # evicted: its buffers are released
    logits = [first]
    tok = np.argmax(first, -1)
    for step in range(2):                                  # a decode graph compiled after the eviction ...
        logits.append(model.decode(tok, pos[:, -1] + 1 + step, cache))
        tok = np.argmax(logits[-1], -1)
    for a, b in zip(logits, want_logits):                  # ... reads the KV cache the prefill wrote
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


def test_warmup_buckets_compiles_ahead_and_later_prompts_compile_nothing(tiny):
    path, _ = tiny
    model = kiln.load(path)
    model.warmup_buckets(max_prompt_len=30, max_new_tokens=4)
    before = model.compiles
    assert before == 3              # prefills of buckets 16 and 32, one decode graph (both fit a 64-slot cache)
    rng = np.random.default_rng(4)
    for n in (2, 17, 30, 9):
        model.generate(rng.integers(0, 96, (1, n)), max_new_tokens=4)
    assert model.compiles == before


def test_bad_bucket_settings_are_named():
    with pytest.raises(InputError, match="increasing positive integers"):
        ShapeBuckets(lengths=(32, 16))
    with pytest.raises(InputError, match="compile cache limit"):
        GraphCache(limit=0)
    assert ShapeBuckets().length(300) == 512 and ShapeBuckets().length(300, limit=320) == 320
    assert ShapeBuckets().length(9000) == 16384 and ShapeBuckets().batch(11) == 16


@pytest.mark.gpu
def test_bucketed_generation_on_cuda_matches_hf(tiny):
    """The same padding on the Triton backend: greedy tokens of a padded batch equal HF's."""
    path, hf = tiny
    model = kiln.load(path, device="cuda")
    rng = np.random.default_rng(5)
    for n in (5, 21, 40):
        ids = rng.integers(3, 96, (3, n))
        mask = np.ones_like(ids)
        mask[2, : n // 2] = 0
        want, _ = _hf_generate(hf, ids, mask, 8)
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=8), want)
    # prompt buckets 16, 32, 64 (batch bucket 4); cache lengths 64 (twice) and 128
    assert _kinds(model).count("prefill") == 3 and _kinds(model).count("decode") == 2
