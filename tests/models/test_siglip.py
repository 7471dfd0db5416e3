"""SigLIP vs HF transformers: the vision tower alone (with its pooling head, at the trained and at
an interpolated resolution) and the two-tower SiglipModel's embeddings and zero-shot logits.

Tiny random models, every weight re-drawn (HF's init leaves attention near uniform and zero
biases), saved with save_pretrained and loaded back through kiln.load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.errors import InputError
from kiln.load import load
from vlm_checkpoints import TEXT, VISION, redraw

transformers = pytest.importorskip("transformers")

@pytest.fixture(scope="module")
def vision_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    hf = redraw(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)))
    d = tmp_path_factory.mktemp("siglip_vision")
    hf.save_pretrained(d)
    return d, hf


@pytest.fixture(scope="module")
def two_tower_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    hf = redraw(transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)), seed=1)
    d = tmp_path_factory.mktemp("siglip")
    hf.save_pretrained(d)
    return d, hf


def pixels(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, *size)).astype(np.float32)


def test_vision_tower_matches_hf(vision_ckpt):
    d, hf = vision_ckpt
    model = load(d)
    px = pixels(2, (32, 32))
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px))
    out = model(px)
    np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], ref.pooler_output.numpy(), atol=1e-4)


def test_other_resolutions_interpolate_the_position_table_like_hf(vision_ckpt):
    d, hf = vision_ckpt
    model = load(d)
    px = pixels(1, (48, 24), seed=1)          # 6x3 patches from a 4x4 table
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px), interpolate_pos_encoding=True)
    out = model(px, interpolate_pos_encoding=True)
    np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], ref.pooler_output.numpy(), atol=1e-4)
    with pytest.raises(InputError, match="interpolate_pos_encoding=True"):
        model(px)
    with pytest.raises(InputError, match=r"pixel_values must be \[images, 3, height, width\]"):
        model(pixels(1, (32, 32))[:, :1])


def test_two_towers_give_hf_embeddings_and_zero_shot_logits(two_tower_ckpt):
    d, hf = two_tower_ckpt
    model = load(d)
    px = pixels(2, (32, 32), seed=2)
    ids = np.random.default_rng(3).integers(0, TEXT["vocab_size"], size=(3, 7))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(px))
    out = model(input_ids=ids, pixel_values=px)
    for name in ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds"):
        np.testing.assert_allclose(out[name], getattr(ref, name).numpy(), atol=1e-4, err_msg=name)
    assert out["logits_per_image"].shape == (2, 3)
    assert (out["logits_per_image"].argmax(1) == ref.logits_per_image.numpy().argmax(1)).all()
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=torch.from_numpy(px)).pooler_output.numpy()
        mask = np.ones_like(ids)
        mask[0, 5:] = 0
        txt = hf.get_text_features(input_ids=torch.from_numpy(ids),
                                   attention_mask=torch.from_numpy(mask)).pooler_output.numpy()
    np.testing.assert_allclose(model.get_image_features(px), img, atol=1e-4)
    got = model.get_text_features(ids, attention_mask=mask)
    np.testing.assert_allclose(got, txt, atol=1e-4)
    assert np.abs(got - model.get_text_features(ids)).max() > 1e-3   # the mask changes the result


def test_images_are_prepared_like_hf_and_classified_zero_shot(two_tower_ckpt, tmp_path):
    """The checkpoint's image processor settings, Pillow images of other sizes, then zero-shot logits."""
    from PIL import Image

    d, hf = two_tower_ckpt
    proc = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    proc.save_pretrained(d)
    rng = np.random.default_rng(4)
    pics = [Image.fromarray(rng.integers(0, 256, size=s, dtype=np.uint8)) for s in ((40, 70, 3), (20, 18, 3))]
    pics.append(pics[0].convert("RGBA"))
    model = load(d)
    px = model.pixel_values(pics)
    np.testing.assert_array_equal(px, proc(pics, return_tensors="np")["pixel_values"])
    ids = rng.integers(0, TEXT["vocab_size"], size=(2, 5))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(px)).logits_per_image.numpy()
    np.testing.assert_allclose(model(input_ids=ids, pixel_values=px)["logits_per_image"], ref, atol=1e-4)
