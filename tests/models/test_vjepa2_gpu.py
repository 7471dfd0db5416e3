"""V-JEPA 2 on device="cuda" (Triton backend): encoder, predictor and classifier logits vs HF transformers
in float32 (within 1e-4), and a bfloat16 encoder within 2e-2 of float32 HF relative to its scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from vjepa2_checkpoints import clip, make_model, save

pytestmark = pytest.mark.gpu
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoder_ckpt(tmp_path_factory):
    model = make_model(seed=7)
    return model, save(model, tmp_path_factory.mktemp("vjepa2_gpu"))


def test_encoder_and_predictor_on_cuda_match_hf(encoder_ckpt):
    hf, path = encoder_ckpt
    model = kiln.load(path, device="cuda")
    x = clip(2, 6, 12, 20, seed=8)
    ctx, tgt = np.array([[0, 44, 7, 30, 12], [3, 4, 5, 6, 40]]), np.array([[44, 1, 2], [29, 0, 5]])
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), context_mask=[torch.from_numpy(ctx)], target_mask=[torch.from_numpy(tgt)])
    out = model(pixel_values_videos=x, context_mask=ctx, target_mask=tgt)
    np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["predictor_output"]["last_hidden_state"],
                               ref.predictor_output.last_hidden_state.numpy(), atol=1e-4)
    plain = model(pixel_values_videos=x)["last_hidden_state"]
    np.testing.assert_allclose(plain, ref.last_hidden_state.numpy(), atol=1e-4)


def test_classifier_on_cuda_matches_hf(tmp_path):
    hf = make_model(classifier=True, seed=9, num_labels=5)
    model = kiln.load(save(hf, tmp_path / "cls"), device="cuda")
    x = clip(1, 4, 16, 16, seed=10)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(model(pixel_values_videos=x)["logits"], ref, atol=1e-4)


def test_bfloat16_encoder_on_cuda(encoder_ckpt):
    hf, path = encoder_ckpt
    x = clip(1, 4, 16, 16, seed=11)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), skip_predictor=True).last_hidden_state.numpy()
    out = np.asarray(kiln.load(path, device="cuda", dtype="bfloat16")(pixel_values_videos=x)["last_hidden_state"],
                     dtype=np.float32)
    assert np.abs(out - ref).max() <= 2e-2 * np.abs(ref).max() + 1e-2
