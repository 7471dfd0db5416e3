"""Gemma, Gemma 2 and Gemma 3 text against HF transformers: tiny random checkpoints with re-drawn weights.

Sequences (12 + 32 generated tokens) are far longer than the sliding window (4), so the local
layers' masks and RoPE bases, Gemma 2's softcaps and query scalar, Gemma 3's q/k norms and linear
RoPE scaling all shape the logits; `test_each_feature_matters` checks that they do.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from gemma_checkpoints import FULL, SLIDING, rewrite_config, save

import kiln
from kiln.io.errors import ConfigError
from kiln.models.gemma import GemmaConfig, GemmaGraphs
from kiln.runtime.language_model import CausalLM

VARIANTS = ("gemma", "gemma2", "gemma3")
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(variant):
        if variant not in made:
            ck = save(tmp_path_factory.mktemp(variant), variant, seed=VARIANTS.index(variant))
            made[variant] = (ck, kiln.load(ck.path))
        return made[variant]

    return get


def ids_of(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 96, shape).astype(np.int64)


def hf_logits(hf, ids, mask=None, positions=None):
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    if positions is not None:
        kw["position_ids"] = torch.tensor(positions)
    with torch.no_grad():
        return hf(torch.tensor(ids), **kw).logits.numpy()


def hf_generate(hf, ids, mask, n):
    with torch.no_grad():
        return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0).numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_hf(checkpoints, variant):
    ck, model = checkpoints(variant)
    ids = ids_of((2, 12))
    np.testing.assert_allclose(model(ids), hf_logits(ck.hf, ids), atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_32_tokens_match_hf_generate(checkpoints, variant):
    ck, model = checkpoints(variant)
    ids = ids_of((1, 6), seed=1)
    mask = np.ones_like(ids)
    got = model.generate(ids, mask, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    np.testing.assert_array_equal(got, hf_generate(ck.hf, ids, mask, 32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_batch_matches_hf(checkpoints, variant):
    ck, model = checkpoints(variant)
    ids = ids_of((2, 9), seed=2)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    got, ref = model(ids, mask, positions), hf_logits(ck.hf, ids, mask, positions)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=TOL, rtol=0)
    out = model.generate(ids, mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(out, hf_generate(ck.hf, ids, mask, 12))


def test_older_config_layout_matches_hf(checkpoints, tmp_path):
    """Gemma 3's hub configs: sliding_window_pattern, rope_local_base_freq, rope_theta + rope_scaling."""
    transformers = pytest.importorskip("transformers")
    ck = save(tmp_path, "gemma3", seed=5, num_hidden_layers=4, layer_types=[SLIDING, FULL, SLIDING, FULL])

    def old(cfg):
        for key in ("layer_types", "rope_parameters"):
            cfg.pop(key)
        cfg.update(sliding_window_pattern=2, rope_local_base_freq=10.0, rope_theta=1000.0,
                   rope_scaling={"rope_type": "linear", "factor": 4.0})

    rewrite_config(tmp_path, old)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf.config.layer_types == [SLIDING, FULL, SLIDING, FULL]  # HF read the old layout as intended
    model = kiln.load(tmp_path)
    assert model.config.layer_types == (SLIDING, FULL, SLIDING, FULL)
    assert model.config.ropes[SLIDING].theta == 10.0 and model.config.ropes[FULL].factor == 4.0
    ids = ids_of((1, 12), seed=3)
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=TOL, rtol=0)


FEATURES = {  # variant -> config changes that must each move the logits
    "gemma2": [dict(attn_logit_softcapping=None), dict(final_logit_softcapping=None), dict(sliding_window=None),
               dict(query_pre_attn_scalar=None)],
    "gemma3": [dict(sliding_window=None), dict(query_pre_attn_scalar=None)],
}


@pytest.mark.parametrize("variant", sorted(FEATURES))
def test_each_feature_matters(checkpoints, variant):
    """Switching a feature off in kiln's config (same weights) moves the logits well past the tolerance."""
    ck, model = checkpoints(variant)
    ids = ids_of((1, 12), seed=4)
    ref = hf_logits(ck.hf, ids)
    cfg = model.config
    changes = FEATURES[variant] + ([dict(ropes={k: replace(r, theta=r.theta * 10) for k, r in cfg.ropes.items()})]
                                   if variant == "gemma3" else [])
    for change in changes:
        other = CausalLM(GemmaGraphs(replace(cfg, **change)), model.params)
        assert np.abs(other(ids) - ref).max() > 100 * TOL, f"{variant}: {change} does not change the logits"


def test_gemma3_sliding_layers_use_the_local_rope(checkpoints):
    ck, model = checkpoints("gemma3")
    ids = ids_of((1, 12), seed=4)
    swapped = {SLIDING: model.config.ropes[FULL], FULL: model.config.ropes[SLIDING]}
    other = CausalLM(GemmaGraphs(replace(model.config, ropes=swapped)), model.params)
    assert np.abs(other(ids) - hf_logits(ck.hf, ids)).max() > 100 * TOL


# ---- config errors ----------------------------------------------------------------------------------

def base_config(**changes):
    cfg = dict(model_type="gemma3_text", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4)
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("changes, named", [
    (dict(rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 10.0},
                           FULL: {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6}}), "yarn"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "dynamic"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(layer_types=[SLIDING, "chunked_attention"]), "layer_types"),
    (dict(hidden_activation="swishy"), "swishy"),
    (dict(model_type="gemma2", query_pre_attn_scalar=-1.0), "query_pre_attn_scalar"),
])
def test_unsupported_or_bad_config_raises_config_error(changes, named):
    with pytest.raises(ConfigError, match=named):
        GemmaConfig.from_hf(base_config(**changes))


def test_gemma3_vision_language_config_reads_its_text_config():
    cfg = GemmaConfig.from_hf({"model_type": "gemma3", "text_config": base_config(model_type=None)})
    assert cfg.model_type == "gemma3_text" and cfg.layer_types == (SLIDING, SLIDING)
    with pytest.raises(ConfigError, match="text_config"):
        GemmaConfig.from_hf({"model_type": "gemma3"})


# ---- Gemma 3 vision-language checkpoints: the text stack ---------------------------------------------

def test_gemma3_vision_language_checkpoint_generates_from_text(tmp_path):
    """Gemma3ForConditionalGeneration (keys under model.language_model.*): text-only prompts as HF."""
    transformers = pytest.importorskip("transformers")
    from gemma_checkpoints import COMMON, redraw

    text = {k: v for k, v in COMMON.items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = transformers.Gemma3Config(
        text_config=dict(text, sliding_window=4, query_pre_attn_scalar=20,
                         layer_types=[SLIDING, FULL], rope_parameters={
                             SLIDING: {"rope_type": "default", "rope_theta": 10.0},
                             FULL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}}),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)
    torch.manual_seed(0)
    hf = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    redraw(hf, 6)
    hf.save_pretrained(tmp_path)
    model = kiln.load(tmp_path)
    assert model.config.model_type == "gemma3_text" and model.config.layer_types == (SLIDING, FULL)
    ids = ids_of((2, 12), seed=6)
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=TOL, rtol=0)
    prompt = ids[:1, :5]
    mask = np.ones_like(prompt)
    got = model.generate(prompt, mask, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    np.testing.assert_array_equal(got, hf_generate(hf, prompt, mask, 16))
