"""Gemma 4 text stack against HF transformers: logits on prompts longer than the sliding window, greedy
generation, left-padded batches, features at placeholder tokens, the MoE block, the composite
checkpoint's text part, and config features kiln refuses by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import kiln
from gemma4_checkpoints import PLAIN, TEXT, save_text
from kiln.errors import ConfigError, InputError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """PLE, KV sharing, k = v, double-wide MLP, softcap (TEXT); loaded through kiln.load."""
    d = tmp_path_factory.mktemp("gemma4_text")
    hf = save_text(d, seed=0)
    return d, hf, kiln.load(d)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma4_plain")
    hf = save_text(d, seed=1, **PLAIN)
    return d, hf, kiln.load(d)


def hf_logits(hf, ids, mask=None, **kw):
    with torch.no_grad():
        return hf(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask), **kw).logits.numpy()


@pytest.mark.parametrize("which", ["full", "plain"])
def test_logits_match_hf_past_the_window(which, request):
    _, hf, model = request.getfixturevalue(which)
    ids = np.random.default_rng(0).integers(3, 128, (2, 13))   # window 4
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_greedy_32_tokens_match_hf_generate(full):
    _, hf, model = full
    ids = np.random.default_rng(5).integers(3, 128, (1, 9))
    ref = hf.generate(torch.tensor(ids), max_new_tokens=32, do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=32, do_sample=False), ref)


@pytest.mark.parametrize("which", ["full", "plain"])
def test_left_padded_batch_matches_hf(which, request):
    _, hf, model = request.getfixturevalue(which)
    ids = np.random.default_rng(2).integers(3, 128, (2, 10))
    mask = np.ones_like(ids)
    mask[0, :4], ids[0, :4] = 0, 0
    ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                      do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=12, do_sample=False), ref)
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    ours = model(ids, mask, position_ids=pos)
    theirs = hf_logits(hf, ids, mask, position_ids=torch.tensor(pos))
    np.testing.assert_allclose(ours[mask == 1], theirs[mask == 1], atol=1e-4, rtol=0)


def test_features_at_placeholders_match_hf_inputs_embeds(full):
    """Rows written at placeholder positions; the per-layer embeddings see the ids as given (HF's
    composite model passes the pad id there) and the merged embeddings."""
    _, hf, model = full
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 128, (1, 11))
    where = np.zeros(ids.shape, bool)
    where[0, 3:7] = True
    ids[where] = 0
    feats = rng.standard_normal((1, 11, 32)).astype(np.float32)
    with torch.no_grad():
        embeds = hf.model.embed_tokens(torch.tensor(ids))
        embeds[torch.tensor(where)] = torch.tensor(feats[where])
        per_layer = hf.model.get_per_layer_inputs(torch.tensor(ids))
        ref = hf(inputs_embeds=embeds, per_layer_inputs=per_layer).logits.numpy()
    ours = model(ids, features=(feats, where))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.abs(ours - model(ids)).max() > 1e-2   # the features change the logits


def test_mixture_of_experts_block_matches_hf(tmp_path):
    """enable_moe_block: router (top 2 of 4, renormalized, per-expert scale) and experts beside the MLP."""
    hf = save_text(tmp_path, seed=3, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16,
                   num_hidden_layers=2, num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"])
    model = kiln.load(tmp_path)
    ids = np.random.default_rng(6).integers(3, 128, (2, 13))
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)
    ref = hf.generate(torch.tensor(ids[:1]), max_new_tokens=16, do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(ids[:1], max_new_tokens=16, do_sample=False), ref)


def test_conditional_generation_text_part(tmp_path):
    """Gemma4ForConditionalGeneration: the language model under model.language_model.* (text_config)."""
    cfg = transformers.Gemma4Config(text_config=dict(TEXT, num_hidden_layers=4, num_kv_shared_layers=2,
                                                     layer_types=["sliding_attention", "full_attention"] * 2),
                                    vision_config=None, audio_config=None)
    torch.manual_seed(0)
    hf = transformers.Gemma4ForConditionalGeneration(cfg).eval()
    from gemma4_checkpoints import redraw

    redraw(hf, 7)
    hf.save_pretrained(tmp_path)
    model = kiln.load(tmp_path)
    ids = np.random.default_rng(4).integers(3, 128, (2, 12))
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("change, named", [
    ({"enable_moe_block": True, "num_experts": 4, "top_k_experts": 6, "moe_intermediate_size": 16},
     "top_k_experts"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "yarn", "rope_theta": 10.0, "factor": 2.0},
                          "full_attention": TEXT["rope_parameters"]["full_attention"]}}, "yarn"),
    ({"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
    ({"hidden_activation": "silu"}, "hidden_activation"),
    ({"layer_types": ["sliding_attention", "chunked_attention"] * 2}, "chunked_attention"),
])
def test_unsupported_config_raises_naming_it(full, tmp_path, change, named):
    d, _, _ = full
    for f in d.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((d / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConfigError, match=named):
        kiln.load(tmp_path)


def test_config_without_layer_types_or_rope_parameters_follows_hf(tmp_path):
    """Missing layer_types / rope_parameters take HF's defaults; Gemma 3's fields (sliding_window_pattern,
    rope_local_base_freq, ...), which HF ignores for Gemma 4, are ignored with a warning."""
    save_text(tmp_path, seed=9, num_kv_shared_layers=0, rope_parameters=None,
              layer_types=["sliding_attention"] * 3 + ["full_attention"])   # = HF's default pattern for 4 layers
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "rope_parameters", "per_layer_config"):
        cfg.pop(k)
    cfg.update(sliding_window_pattern=2, rope_local_base_freq=7.0, rope_theta=5.0, global_head_dim=32,
               num_global_key_value_heads=1)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.Gemma4ForCausalLM.from_pretrained(tmp_path).eval()
    with pytest.warns(UserWarning, match="rope_local_base_freq"):
        model = kiln.load(tmp_path, optimize=False)
    ids = np.random.default_rng(8).integers(3, 128, (1, 12))
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_block_ids_refused_where_hf_masks_differently(full):
    """Image blocks are the unified model's; this config has no bidirectional attention."""
    _, _, model = full
    ids = np.random.default_rng(3).integers(3, 128, (1, 6))
    where = np.zeros(ids.shape, bool)
    blocks = np.where(np.arange(6) < 3, 0, -1)[None]
    with pytest.raises(InputError, match="block_ids"):
        model(ids, features=(np.zeros((1, 6, 32), np.float32), where, blocks))


def test_composite_vision_block_mask_matches_hf(tmp_path):
    """Gemma4ForConditionalGeneration with use_bidirectional_attention="vision": an image block (mm_token_type_ids)
    is bidirectional on sliding layers only, inside the window; full layers stay causal. The image tokens'
    rows are HF's pad embedding here (no vision tower), so kiln gets the pad id there and no feature rows."""
    text = dict(TEXT, num_hidden_layers=4, num_kv_shared_layers=2, use_bidirectional_attention="vision",
                layer_types=["sliding_attention", "full_attention"] * 2)
    cfg = transformers.Gemma4Config(text_config=text, vision_config=None, audio_config=None, image_token_id=120)
    torch.manual_seed(0)
    hf = transformers.Gemma4ForConditionalGeneration(cfg).eval()
    from gemma4_checkpoints import redraw

    redraw(hf, 11)
    hf.save_pretrained(tmp_path)
    model = kiln.load(tmp_path)
    ids = np.random.default_rng(9).integers(3, 110, (1, 14))
    ids[0, 2:8] = 120                                   # a 6-token image block, longer than the window (4)
    types = (ids == 120).astype(np.int64)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), mm_token_type_ids=torch.tensor(types)).logits.numpy()
        causal = hf(input_ids=torch.tensor(ids)).logits.numpy()
    text_ids = np.where(types == 1, 0, ids)
    none = (np.zeros((1, 14, 32), np.float32), np.zeros(ids.shape, bool))
    np.testing.assert_allclose(model(text_ids, features=(*none, np.where(types == 1, 0, -1))), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model(text_ids, features=none), causal, atol=1e-4, rtol=0)
    assert np.abs(ref - causal).max() > 1e-2
