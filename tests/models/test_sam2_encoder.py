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
