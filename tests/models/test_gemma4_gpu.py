"""Gemma 4 on device="cuda" against HF transformers (float32): the text stack's logits past the window and
greedy tokens, and the unified model's image+text logits and greedy tokens (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from gemma4_checkpoints import TOKENS, save_text, save_unified

pytestmark = pytest.mark.gpu


def test_text_stack_on_cuda_matches_hf(tmp_path):
    hf = save_text(tmp_path, seed=0)
    model = kiln.load(tmp_path, device="cuda")
    ids = np.random.default_rng(0).integers(3, 128, (2, 13))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model(ids), ref, atol=1e-4, rtol=0)
    prompt = ids[:1, :9]
    ref_ids = hf.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=32, do_sample=False), ref_ids)


def test_unified_image_prompt_on_cuda_matches_hf(tmp_path):
    hf = save_unified(tmp_path, seed=0)
    model = kiln.load(tmp_path, device="cuda")
    rng = np.random.default_rng(0)
    px = rng.standard_normal((1, 8, 48)).astype(np.float32)
    pos = np.array([[[x, y] for y in range(2) for x in range(3)] + [[-1, -1]] * 2])
    ids = np.array([[2, 10, 11, TOKENS["boi_token_id"]] + [TOKENS["image_token_id"]] * 6
                    + [TOKENS["eoi_token_id"], 12, 13, 14]])
    types = (ids == TOKENS["image_token_id"]).astype(np.int64)
    inputs = dict(input_ids=ids, pixel_values=px, image_position_ids=pos, mm_token_type_ids=types)
    pt = {k: torch.tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        ref = hf(**pt).logits.numpy()
    np.testing.assert_allclose(model(**inputs), ref, atol=1e-4, rtol=0)
    ref_ids = hf.generate(**pt, max_new_tokens=16, do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(**inputs, max_new_tokens=16, do_sample=False), ref_ids)
