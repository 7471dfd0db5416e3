"""Idefics3 / SmolVLM vs HF transformers: image features (SigLIP tower + pixel shuffle + projection),
logits, and greedy generation with one and with two images (several tiles each).

Tiny random models with every weight re-drawn, saved with save_pretrained, loaded through kiln.load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.errors import InputError
from kiln.load import load
from vlm_checkpoints import FAKE_TOKEN, GLOBAL_TOKEN, IMAGE_TOKEN, TOKENS_PER_TILE, hf_image_features, vlm_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["smolvlm", "idefics3"])
def vlm(request, tmp_path_factory):
    family = request.param
    hf = vlm_model(family, seed=1, tie=family == "smolvlm")
    d = tmp_path_factory.mktemp(family)
    hf.save_pretrained(d)
    return load(d), hf


def prompt(tiles_per_image, rng, text=4):
    """Token ids: some text, then per image its tiles' <image> runs between fake tokens, then text."""
    ids = [3, *rng.integers(3, 90, size=text)]
    for tiles in tiles_per_image:
        for _ in range(tiles):
            ids += [FAKE_TOKEN, *[IMAGE_TOKEN] * TOKENS_PER_TILE]
        ids += [FAKE_TOKEN, GLOBAL_TOKEN]
    ids += list(rng.integers(3, 90, size=text))
    return np.array([ids], np.int64)


def pixels(tiles, rng):
    return rng.standard_normal((1, tiles, 3, 32, 32)).astype(np.float32)


def test_image_features_and_logits_match_hf(vlm):
    model, hf = vlm
    rng = np.random.default_rng(0)
    ids, px = prompt([5], rng), pixels(5, rng)          # 4 tiles + the global image
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(px)).logits.numpy()
    feats = model.get_image_features(px)
    np.testing.assert_allclose(feats.reshape(-1, feats.shape[-1]), hf_image_features(hf, px), atol=1e-4)
    out = model(ids, pixel_values=px)
    np.testing.assert_allclose(out["logits"], ref, atol=1e-4)
    assert np.abs(out["logits"] - model(ids)["logits"]).max() > 1e-2    # the image changes the logits


@pytest.mark.parametrize("tiles", [[1], [5, 1]], ids=["one_image", "two_images"])
def test_greedy_generation_matches_hf(vlm, tiles):
    model, hf = vlm
    rng = np.random.default_rng(len(tiles))
    ids, px = prompt(tiles, rng), pixels(sum(tiles), rng)
    mask = np.ones_like(ids)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          pixel_values=torch.from_numpy(px), do_sample=False, max_new_tokens=16).numpy()
    runs = model.image_runs
    out = model.generate(ids, mask, pixel_values=px, max_new_tokens=16)
    np.testing.assert_array_equal(out, ref)
    assert model.image_runs == runs + 1          # the images were encoded once, not per step


def test_padded_tiles_and_pixel_masks_follow_hf(vlm):
    """A batch of two prompts: the second has fewer tiles (an all-zero padding tile), and one tile is
    partly masked (its patch mask and fractional position ids)."""
    model, hf = vlm
    rng = np.random.default_rng(5)
    a, b = prompt([2], rng), prompt([1], rng, text=6)
    ids = np.concatenate([a, np.pad(b, ((0, 0), (1, 0)))])        # b left-padded by one token
    attn = np.ones_like(ids)
    attn[1, 0] = 0
    px = np.zeros((2, 2, 3, 32, 32), np.float32)
    px[0] = pixels(2, rng)[0]
    px[1, 0] = pixels(1, rng)[0, 0]
    pmask = np.ones((2, 2, 32, 32), np.int64)
    pmask[0, 1, 16:, :] = 0
    pmask[0, 1, :, 24:] = 0
    pmask[1, 1] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attn),
                 pixel_values=torch.from_numpy(px), pixel_attention_mask=torch.from_numpy(pmask)).logits.numpy()
    got = model(ids, attn, pixel_values=px, pixel_attention_mask=pmask)["logits"]
    np.testing.assert_allclose(got[attn == 1], ref[attn == 1], atol=1e-4)
    unmasked = model(ids, attn, pixel_values=px)["logits"]
    assert np.abs(unmasked[0] - got[0]).max() > 1e-3    # the pixel mask mattered


def test_image_token_count_must_match_the_images(vlm):
    model, _ = vlm
    rng = np.random.default_rng(7)
    ids = prompt([2], rng)
    with pytest.raises(InputError, match=r"the prompt has 8 image tokens .* the images give 4 features"):
        model(ids, pixel_values=pixels(1, rng))
    with pytest.raises(InputError, match=r"pixel_values must be \[batch, images, 3, height, width\]"):
        model(ids, pixel_values=rng.standard_normal((1, 2, 4, 32, 32)).astype(np.float32))
