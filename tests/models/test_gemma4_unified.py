"""Gemma 4 unified against HF transformers: the vision and audio embedders on the same inputs, logits of
image+text and audio+text prompts (image tokens attending to each other both ways, past the sliding
window), greedy generation, the two checkpoint layouts, and input errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import kiln
from gemma4_checkpoints import TOKENS, save_unified
from kiln.errors import InputError

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

IMAGE, AUDIO = TOKENS["image_token_id"], TOKENS["audio_token_id"]


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma4_unified")
    hf = save_unified(d, seed=0)
    return d, hf, kiln.load(d)


@pytest.fixture(scope="module")
def image_prompt():
    """Six image patches (of 8: two are padding) in a 3x2 grid; the image run (6) is longer than the window (4)."""
    rng = np.random.default_rng(0)
    px = rng.standard_normal((1, 8, 48)).astype(np.float32)
    pos = np.array([[[x, y] for y in range(2) for x in range(3)] + [[-1, -1]] * 2])
    ids = np.array([[2, 10, 11, TOKENS["boi_token_id"]] + [IMAGE] * 6 + [TOKENS["eoi_token_id"], 12, 13, 14]])
    return ids, px, pos, (ids == IMAGE).astype(np.int64)


@pytest.fixture(scope="module")
def audio_prompt():
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((1, 5, 20)).astype(np.float32)
    keep = np.array([[True] * 4 + [False]])
    ids = np.array([[2, 10, TOKENS["boa_token_id"]] + [AUDIO] * 4 + [TOKENS["eoa_token_index"], 12, 13]])
    return ids, frames, keep, np.where(ids == AUDIO, 3, 0)


def t(a):
    return torch.tensor(a)


def test_embedders_match_hf_modules(unified, image_prompt, audio_prompt):
    _, hf, model = unified
    _, px, pos, _ = image_prompt
    _, frames, _, _ = audio_prompt
    with torch.no_grad():
        vision = hf.model.embed_vision(t(px), t(pos)).pooler_output.numpy()
        audio = hf.model.embed_audio(t(frames)).numpy()
    np.testing.assert_allclose(model.get_image_features(px, pos), vision, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.get_audio_features(frames), audio, atol=1e-4, rtol=0)


def test_image_text_logits_match_hf(unified, image_prompt):
    _, hf, model = unified
    ids, px, pos, types = image_prompt
    with torch.no_grad():
        ref = hf(input_ids=t(ids), pixel_values=t(px), image_position_ids=t(pos), mm_token_type_ids=t(types)).logits
        causal = hf(input_ids=t(ids), pixel_values=t(px), image_position_ids=t(pos)).logits
    ours = model(ids, pixel_values=px, image_position_ids=pos, mm_token_type_ids=types)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=0)
    assert (ref - causal).abs().max().item() > 1e-2   # the bidirectional image block matters here
    np.testing.assert_allclose(model(ids, pixel_values=px, image_position_ids=pos), causal.numpy(), atol=1e-4, rtol=0)


def test_audio_text_logits_match_hf(unified, audio_prompt):
    _, hf, model = unified
    ids, frames, keep, types = audio_prompt
    with torch.no_grad():
        ref = hf(input_ids=t(ids), input_features=t(frames), input_features_mask=t(keep),
                 mm_token_type_ids=t(types)).logits.numpy()
    ours = model(ids, input_features=frames, input_features_mask=keep, mm_token_type_ids=types)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_greedy_16_tokens_match_hf_generate(unified, image_prompt, audio_prompt):
    _, hf, model = unified
    ids, px, pos, types = image_prompt
    ref = hf.generate(input_ids=t(ids), pixel_values=t(px), image_position_ids=t(pos), mm_token_type_ids=t(types),
                      max_new_tokens=16, do_sample=False).numpy()
    out = model.generate(ids, pixel_values=px, image_position_ids=pos, mm_token_type_ids=types, max_new_tokens=16,
                         do_sample=False)
    np.testing.assert_array_equal(out, ref)
    ids, frames, keep, types = audio_prompt
    ref = hf.generate(input_ids=t(ids), input_features=t(frames), input_features_mask=t(keep),
                      mm_token_type_ids=t(types), max_new_tokens=16, do_sample=False).numpy()
    out = model.generate(ids, input_features=frames, input_features_mask=keep, mm_token_type_ids=types,
                         max_new_tokens=16, do_sample=False)
    np.testing.assert_array_equal(out, ref)


def test_left_padded_batch_of_images_matches_hf_generate(unified):
    """Two prompts of different lengths (left padding), images of 6 and 4 patches."""
    _, hf, model = unified
    px = np.random.default_rng(5).standard_normal((2, 8, 48)).astype(np.float32)
    pos = np.full((2, 8, 2), -1)
    pos[0, :6] = [[x, y] for y in range(2) for x in range(3)]
    pos[1, :4] = [[x, y] for y in range(2) for x in range(2)]
    a = [2, 10, 11, TOKENS["boi_token_id"]] + [IMAGE] * 6 + [TOKENS["eoi_token_id"], 12, 13, 14]
    b = [2, 20, TOKENS["boi_token_id"]] + [IMAGE] * 4 + [TOKENS["eoi_token_id"], 15]
    ids, mask = np.zeros((2, len(a)), np.int64), np.zeros((2, len(a)), np.int64)
    ids[0], mask[0] = a, 1
    ids[1, -len(b):], mask[1, -len(b):] = b, 1
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=px, image_position_ids=pos,
                  mm_token_type_ids=(ids == IMAGE).astype(np.int64))
    ref = hf.generate(**{k: t(v) for k, v in inputs.items()}, max_new_tokens=12, do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(**inputs, max_new_tokens=12, do_sample=False), ref)


def test_layout_is_detected_and_logged(unified, tmp_path, caplog, image_prompt):
    """The save_pretrained layout, and HF's module names (model.embed_vision.patch_*) renamed back."""
    d, _, model = unified
    assert model.layout.startswith("unified (model.vision_embedder")
    tensors = safetensors_torch.load_file(str(d / "model.safetensors"))
    renamed = {k.replace("model.vision_embedder.", "model.embed_vision.")
               .replace("model.embed_vision.embedding_projection", "model.embed_vision.multimodal_embedder."
                                                                   "embedding_projection"): v
               for k, v in tensors.items()}
    safetensors_torch.save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    with caplog.at_level(logging.INFO, logger="kiln"):
        other = kiln.load(tmp_path, optimize=False)
    assert "HF module names" in other.layout and "HF module names" in caplog.text
    _, px, pos, _ = image_prompt
    np.testing.assert_allclose(other.get_image_features(px, pos), model.get_image_features(px, pos), atol=1e-6)


def test_input_errors(unified, image_prompt, audio_prompt):
    _, _, model = unified
    ids, px, pos, types = image_prompt
    with pytest.raises(InputError, match="6 image tokens .* 5 soft tokens"):
        model(ids, pixel_values=px, image_position_ids=np.where(np.arange(8)[None, :, None] == 5, -1, pos))
    with pytest.raises(InputError, match="image_position_ids"):
        model(ids, pixel_values=px)
    with pytest.raises(InputError, match=r"pixel_values must be .* \[images, patches, 48\]"):
        model(ids, pixel_values=px[..., :40], image_position_ids=pos)
    with pytest.raises(InputError, match="6 image tokens"):
        model(ids)
    ids, frames, _, _ = audio_prompt
    with pytest.raises(InputError, match="input_features_mask"):
        model(ids, input_features=frames)


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory):
    """A unified checkpoint with a tokenizer (ids below the image/audio token ids, 290+) and max_soft_tokens 70."""
    from llama_checkpoints import train_tokenizer

    d = tmp_path_factory.mktemp("gemma4_unified_tok")
    tok = train_tokenizer(280)
    hf = save_unified(d, seed=2, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    tok.save_pretrained(d)
    (d / "preprocessor_config.json").write_text('{"image_processor": {"max_soft_tokens": 70}}')
    return d, hf, tok


def run_and_reference(d, hf, tok, capsys, argv, **media):
    """What `kiln run` printed, and the text HF generates from kiln's preprocessed inputs."""
    from kiln.cli import main
    from kiln.models.gemma4_processing import prompt_inputs

    assert main(["run", str(d), *argv, "--prompt", "the quick fox", "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed   # some text came out
    inputs = prompt_inputs(tok("the quick fox")["input_ids"], TOKENS, bos=tok.bos_token_id, **media)
    assert inputs["input_ids"][0, 1] in (TOKENS["boi_token_id"], TOKENS["boa_token_id"])   # right after BOS
    ref = hf.generate(**{k: t(v) for k, v in inputs.items()}, max_new_tokens=8, do_sample=False)
    return printed, tok.decode(ref[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_kiln_run_image_prompt_matches_hf(with_tokenizer, tmp_path, capsys):
    """`kiln run CKPT --image photo.png --prompt ...`: kiln's preprocessing and placeholder run, then the
    text HF generates from the same inputs."""
    from kiln.models.gemma4_processing import image_inputs

    PIL_Image = pytest.importorskip("PIL.Image")
    photo = tmp_path / "photo.png"
    PIL_Image.fromarray(np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(photo)
    images = image_inputs([photo], patch_size=2, pooling_kernel_size=2, max_soft_tokens=70)
    printed, ref = run_and_reference(*with_tokenizer, capsys, ["--image", str(photo)], images=images)
    assert printed == ref


def test_kiln_run_audio_prompt_matches_hf(with_tokenizer, tmp_path, capsys):
    from kiln.cli import main
    from kiln.models.gemma4_processing import audio_inputs

    soundfile = pytest.importorskip("soundfile")
    wave = (0.3 * np.random.default_rng(4).standard_normal(50)).astype(np.float32)
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, wave, 16000, subtype="FLOAT")
    audio = audio_inputs([soundfile.read(clip, dtype="float32")[0]], samples_per_token=20)
    printed, ref = run_and_reference(*with_tokenizer, capsys, [str(clip)], audio=audio)
    assert printed == ref
    soundfile.write(tmp_path / "slow.wav", wave, 8000)
    assert main(["run", str(with_tokenizer[0]), str(tmp_path / "slow.wav"), "--prompt", "x"]) == 2
    assert "16 kHz" in capsys.readouterr().err
