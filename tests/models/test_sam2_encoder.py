"""SAM 2 image encoder (Hiera + FPN neck + high-resolution projections) against HF get_image_embeddings."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam2_checkpoints import make_checkpoint, pixels  # noqa: E402

import kiln  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2_tiny")
    return path, make_checkpoint(path)


def hf_embeddings(model, px):
    with torch.no_grad():
        return [e.numpy() for e in model.get_image_embeddings(torch.from_numpy(px))]


def test_image_embeddings_match_hf(checkpoint):
    path, hf = checkpoint
    px = pixels(batch=2)
    ours = kiln.load(path).embed_image(px)
    ref = hf_embeddings(hf, px)
    assert [e.shape for e in ours] == [e.shape for e in ref] == [(2, 4, 32, 32), (2, 8, 16, 16), (2, 32, 8, 8)]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_position_embeddings_matter(checkpoint):
    """Zeroing the window position embedding changes the output: the tiling path is exercised."""
    path, _ = checkpoint
    model = kiln.load(path)
    px = pixels(seed=3)
    base = model.embed_image(px)[2]
    model.params["vision_encoder.backbone.pos_embed_window"] = np.zeros_like(
        model.params["vision_encoder.backbone.pos_embed_window"])
    model._compiled.clear()
    assert np.abs(model.embed_image(px)[2] - base).max() > 1e-2


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["vision_config"].update(backbone_channel_list=[128, 64, 16, 32]), "must be embed_dim_per_stage"),
    (lambda c: c["vision_config"]["backbone_config"].update(blocks_per_stage=[1, 2, 0, 2]), "blocks_per_stage"),
    (lambda c: c["mask_decoder_config"].update(num_attention_heads=3), "must be a multiple of num_attention_heads"),
    (lambda c: c["prompt_encoder_config"].update(hidden_size=48), "must be equal"),
])
def test_config_errors(edit, match):
    from sam2_checkpoints import tiny_config

    from kiln.io.errors import ConfigError
    from kiln.models.sam2_config import Sam2Config

    cfg = tiny_config().to_dict()
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        Sam2Config.from_dict(cfg)
