"""Gemma 4 unified preprocessing against HF: images against HF's PIL image processor (16-px patches) merged
with the unified processor's own `patches_merge` (its module needs torchvision, so the function is taken
from its source), audio against the unified feature extractor."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.errors import InputError
from kiln.models.gemma4_processing import audio_inputs, image_inputs, mm_token_type_ids

transformers = pytest.importorskip("transformers")
PIL_Image = pytest.importorskip("PIL.Image")


def hf_unified_functions():
    """patches_merge and pad_along_first_dim from HF's torchvision-backed unified image processor."""
    import transformers.models.gemma4 as gemma4

    path = Path(inspect.getfile(gemma4)).parent.parent / "gemma4_unified" / "image_processing_gemma4_unified.py"
    tree = ast.parse(path.read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("patches_merge",
                                                                                       "pad_along_first_dim")]
    ns = {"torch": torch, "math": math}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), ns)
    return ns["patches_merge"], ns["pad_along_first_dim"]


def hf_reference(images, patch, kernel, max_soft):
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    merge, pad = hf_unified_functions()
    proc = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=kernel, max_soft_tokens=max_soft)
    out = proc(images, return_tensors="pt")
    pixels, positions = [], []
    for px, pos in zip(out["pixel_values"], out["image_position_ids"]):
        real = (pos != -1).all(-1)
        merged, merged_pos = merge(px[real][None], pos[real][None], int(real.sum()) // kernel ** 2)
        merged, merged_pos = pad(merged[0], merged_pos[0], max_soft)
        pixels.append(merged.numpy())
        positions.append(merged_pos.numpy())
    return np.stack(pixels), np.stack(positions), out["num_soft_tokens_per_image"]


@pytest.mark.parametrize("sizes", [[(37, 53), (20, 90)], [(64, 64)], [(6, 200)]])
def test_images_match_hf_processor(sizes):
    rng = np.random.default_rng(0)
    images = [PIL_Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    ref_px, ref_pos, ref_counts = hf_reference(images, 2, 2, 70)
    ours = image_inputs(images, patch_size=2, pooling_kernel_size=2, max_soft_tokens=70)
    assert list(ours["num_soft_tokens_per_image"]) == list(ref_counts)
    np.testing.assert_array_equal(ours["image_position_ids"], ref_pos)
    np.testing.assert_allclose(ours["pixel_values"], ref_px, atol=1e-6, rtol=0)


def test_audio_matches_hf_feature_extractor():
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import Gemma4UnifiedAudioFeatureExtractor

    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(95).astype(np.float32), rng.standard_normal(40).astype(np.float32)]
    ref = Gemma4UnifiedAudioFeatureExtractor(feature_size=20, audio_samples_per_token=20)(clips, return_tensors="np")
    ours = audio_inputs(clips, samples_per_token=20)
    np.testing.assert_array_equal(ours["input_features"], ref["input_features"])
    np.testing.assert_array_equal(ours["input_features_mask"], ref["input_features_mask"])


def test_token_types_and_errors():
    tokens = {"image_token_id": 5, "video_token_id": 6, "audio_token_id": 7}
    np.testing.assert_array_equal(mm_token_type_ids(np.array([[1, 5, 5, 7, 6]]), tokens), [[0, 1, 1, 3, 2]])
    with pytest.raises(InputError, match="max_soft_tokens"):
        image_inputs([np.zeros((8, 8, 3), np.uint8)], patch_size=2, pooling_kernel_size=2, max_soft_tokens=64)
    with pytest.raises(InputError, match="uint8"):
        image_inputs([np.zeros((8, 8), np.float32)], patch_size=2, pooling_kernel_size=2)
    with pytest.raises(InputError, match="16000 Hz"):
        audio_inputs([np.zeros(10, np.float32)], samples_per_token=4, sampling_rate=8000)
