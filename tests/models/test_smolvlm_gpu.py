"""SigLIP and SmolVLM on device="cuda" (Triton backend) vs HF transformers on the CPU: float32 image
features and logits within 1e-4, greedy tokens identical; bfloat16 greedy generation runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.load import load
from vlm_checkpoints import FAKE_TOKEN, IMAGE_TOKEN, TOKENS_PER_TILE, VISION, hf_image_features, redraw, vlm_model

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory):
    hf = vlm_model("smolvlm", seed=3)
    d = tmp_path_factory.mktemp("smolvlm_gpu")
    hf.save_pretrained(d)
    return d, hf


def inputs(tiles, seed=0):
    rng = np.random.default_rng(seed)
    ids = [3, 5, 7]
    for _ in range(tiles):
        ids += [FAKE_TOKEN, *[IMAGE_TOKEN] * TOKENS_PER_TILE]
    ids += [9, 11, 13]
    return np.array([ids], np.int64), rng.standard_normal((1, tiles, 3, 32, 32)).astype(np.float32)


def test_smolvlm_on_cuda_matches_hf(smolvlm_dir):
    d, hf = smolvlm_dir
    model = load(d, device="cuda")
    ids, px = inputs(3)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(px))
        seq = hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                          pixel_values=torch.from_numpy(px), do_sample=False, max_new_tokens=16).numpy()
    out = model(ids, pixel_values=px)
    np.testing.assert_allclose(out["image_hidden_states"].reshape(-1, 32), hf_image_features(hf, px), atol=1e-4)
    np.testing.assert_allclose(out["logits"], ref.logits.numpy(), atol=1e-4)
    np.testing.assert_array_equal(model.generate(ids, np.ones_like(ids), pixel_values=px, max_new_tokens=16), seq)


def test_smolvlm_bfloat16_generates_on_cuda(smolvlm_dir):
    d, _ = smolvlm_dir
    model = load(d, device="cuda", dtype="bfloat16")
    ids, px = inputs(2, seed=1)
    out = model.generate(ids, np.ones_like(ids), pixel_values=px, max_new_tokens=8)
    assert out.shape == (1, ids.shape[1] + 8)


def test_siglip_vision_on_cuda_matches_hf(tmp_path):
    torch.manual_seed(0)
    hf = redraw(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)))
    hf.save_pretrained(tmp_path)
    px = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px))
    out = load(tmp_path, device="cuda")(px)
    np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], ref.pooler_output.numpy(), atol=1e-4)
