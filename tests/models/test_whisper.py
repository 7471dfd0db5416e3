"""Whisper vs HF transformers: tiny random WhisperForConditionalGeneration checkpoints saved with
save_pretrained (plus a WhisperTokenizer built from a byte-level vocabulary), loaded by kiln's loader.

The weights are drawn so that the transcripts depend on the audio (with HF's default init a tiny model
emits the same tokens for any input, which would hide cross-attention bugs): a large std, token
embeddings of equal norm and a loud cross-attention.
"""

import argparse
import copy
import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from kiln.io.audio import AudioError
from kiln.io.log_mel import log_mel_spectrogram
from kiln.models.whisper import load_whisper

transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")
from tokenizers import AddedToken, pre_tokenizers
from transformers.models.whisper.tokenization_whisper import LANGUAGES as HF_LANGUAGES

SOT, EOT, FIRST_LANG = 257, 256, 258
TRANSLATE, TRANSCRIBE = 258 + len(HF_LANGUAGES), 259 + len(HF_LANGUAGES)
NO_TIMESTAMPS = TRANSCRIBE + 4


def make_tokenizer():
    """A WhisperTokenizer: 256 byte tokens, Whisper's special tokens in Whisper's order, 1501 timestamps."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = transformers.WhisperTokenizer(vocab=vocab, merges=[])
    specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in HF_LANGUAGES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                   "<|notimestamps|>"])
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
    assert tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"]) == [SOT, NO_TIMESTAMPS]
    return tok


def make_checkpoint(path, tok, *, d_model=64, heads=(2, 4), layers=2, ffn=128, mels=80, tie=True,
                    legacy_prompt=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.WhisperConfig(
        vocab_size=len(tok), num_mel_bins=mels, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads[0], decoder_attention_heads=heads[1], encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_source_positions=1500, max_target_positions=448, pad_token_id=EOT, bos_token_id=EOT,
        eos_token_id=EOT, decoder_start_token_id=SOT, tie_word_embeddings=tie)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # keep the encoder's sinusoids and the decoder's learned table as initialized
            if "layer_norm.weight" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.3 if p.dim() >= 2 else 0.1)
        # quiet timestamp tokens: like a trained model, emit none after <|notimestamps|> (HF would then decode
        # one 30 s window again from the "timestamp"), while with timestamps on they still win often
        out = model.proj_out.weight  # the token embedding itself when tied
        out *= 0.3 * d_model ** 0.5 / out.norm(dim=1, keepdim=True)  # rows of equal norm: no token always wins
        out[NO_TIMESTAMPS + 1:] *= 0.1
        model.model.decoder.layer_norm.bias.zero_()
        for layer in model.model.decoder.layers:  # a loud cross-attention: the audio steers the tokens
            for proj, gain in (("q_proj", 1.5), ("k_proj", 1.5), ("v_proj", 3.0), ("out_proj", 3.0)):
                getattr(layer.encoder_attn, proj).weight *= gain
        if tie:
            assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    gc = model.generation_config
    gc._from_model_config = False
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = SOT, EOT, EOT, EOT
    gc.no_timestamps_token_id = NO_TIMESTAMPS
    gc.lang_to_id = {f"<|{c}|>": FIRST_LANG + i for i, c in enumerate(HF_LANGUAGES)}
    gc.task_to_id = {"translate": TRANSLATE, "transcribe": TRANSCRIBE}
    gc.is_multilingual = True
    gc.max_initial_timestamp_index = 50
    gc.suppress_tokens = [1, 2, 7, 63, TRANSCRIBE + 1, TRANSCRIBE + 2]
    gc.begin_suppress_tokens = [tok.convert_tokens_to_ids("Ġ"), EOT]
    gc.max_length = 24
    if legacy_prompt:  # the original checkpoints' form: detect the language, then transcribe
        gc.forced_decoder_ids = [[1, None], [2, TRANSCRIBE]]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The HF reference runs thousands of tiny ops: one thread avoids spin-waiting on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper_tiny")
    tok = make_tokenizer()
    hf = make_checkpoint(path, tok)
    return path, hf, tok, load_whisper(path)


def synthetic_audio(seconds, rng, rate=16000):
    """Half-second blocks of chirps, tones, noise bursts and silence: audio whose log-mel varies in time."""
    blocks = []
    n = int(0.5 * rate)
    t = np.arange(n) / rate
    for _ in range(int(np.ceil(seconds * 2))):
        kind = rng.integers(4)
        f0, f1 = rng.uniform(100, 6000, size=2)
        if kind == 0:
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2))
        elif kind == 1:
            x = np.sin(2 * np.pi * f0 * t) * np.sin(np.pi * t / t[-1])
        elif kind == 2:
            x = rng.standard_normal(n) * 0.5
        else:
            x = np.zeros(n)
        blocks.append(rng.uniform(0.05, 0.8) * x + 0.01 * rng.standard_normal(n))
    return np.concatenate(blocks)[:int(seconds * rate)].astype(np.float32)


def features(batch, frames=3000, mels=80, seed=0):
    """Log-mel features of synthetic audio, as WhisperFeatureExtractor makes them (unpadded)."""
    rng = np.random.default_rng(seed)
    return np.stack([log_mel_spectrogram(synthetic_audio(frames / 100, rng), n_mels=mels, pad_or_trim=False)
                     for _ in range(batch)])


def hf_generate(hf, feats, **kw):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(torch.from_numpy(feats), **kw)


# ---- the network ------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tiny):
    feats = features(2)
    return feats, tiny[3].encode(feats)


def test_encoder_and_decoder_logits_match_hf_at_every_step(tiny, encoded):
    _, hf, _, model = tiny
    feats, enc = encoded
    rng = np.random.default_rng(1)
    ids = np.concatenate([[[SOT, FIRST_LANG, TRANSCRIBE, NO_TIMESTAMPS]] * 2,
                          rng.integers(0, 256, size=(2, 36))], axis=1)  # 40 tokens: crosses the 32-slot cache bucket
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(feats), decoder_input_ids=torch.from_numpy(ids))
    ref_logits = ref.logits.numpy()
    assert np.abs(ref_logits).max() > 1.0
    out = model(encoder_outputs=enc, decoder_input_ids=ids)
    np.testing.assert_allclose(enc.last_hidden_state, ref.encoder_last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["logits"], ref_logits, atol=1e-4)
    # incremental decoding: a 4-token prefill, then one token per step through the static KV cache
    state = model.start_decoding(enc)
    np.testing.assert_allclose(state.step(ids[:, :4]), ref_logits[:, :4], atol=1e-4)
    for t in range(4, ids.shape[1]):
        np.testing.assert_allclose(state.step(ids[:, t:t + 1])[:, 0], ref_logits[:, t], atol=1e-4, err_msg=f"step {t}")
    assert state.capacity == 64


def test_hypotheses_share_cross_attention_and_reorder_within_utterance(tiny, encoded):
    model, (_, enc) = tiny[3], encoded
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 256, size=(6, 5))
    grouped = model.start_decoding(enc, group=3)  # 2 utterances x 3 hypotheses, cross K/V not copied
    flat = model.start_decoding(enc.select([0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(grouped.step(ids[:, :3]), flat.step(ids[:, :3]), atol=1e-5)
    order = [2, 2, 0, 4, 3, 5]
    grouped.reorder(order)  # as if the hypotheses had been fed the histories ids[order]
    replay = model.start_decoding(enc.select([0, 0, 0, 1, 1, 1]))
    replay.step(ids[order, :3])
    # the grouped and flat graphs have other shapes, so BLAS sums in another order: float32 noise
    # (1.04e-5 on a logit of 0.84 with today's wheels) needs a relative share too
    np.testing.assert_allclose(grouped.step(ids[:, 3:4]), replay.step(ids[:, 3:4]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="own utterance"):
        grouped.reorder([3, 0, 0, 3, 3, 3])


# ---- decoding vs HF generate ----------------------------------------------------------

def test_greedy_matches_hf_generate(tiny):
    _, hf, _, model = tiny
    feats = features(2, seed=1)
    ref = hf_generate(hf, feats, language="en", task="transcribe").numpy()
    out = model.generate(feats, language="en", task="transcribe")
    assert len({tuple(r) for r in ref}) > 1, "the transcripts must depend on the audio"
    np.testing.assert_array_equal(out, ref)


def test_beam5_matches_hf_generate(tiny):
    _, hf, _, model = tiny
    feats = features(2, seed=3)
    ref = hf_generate(hf, feats, language="de", task="transcribe", num_beams=5).numpy()
    out = model.generate(feats, language="de", task="transcribe", num_beams=5)
    np.testing.assert_array_equal(out, ref)
    greedy = hf_generate(hf, feats, language="de", task="transcribe").numpy()
    assert not np.array_equal(greedy, out), "beam search should find different transcripts here"


@pytest.mark.parametrize("eos,early_stopping,length_penalty", [(210, False, 1.0), (356, True, 0.6)])
def test_beam_search_with_finished_hypotheses_matches_hf(tiny, monkeypatch, eos, early_stopping, length_penalty):
    """An end token the model often emits (a trained model's <|endoftext|>): hypotheses finish early, which
    exercises the finished set, the length penalty and HF's stopping heuristics (and pad != eos)."""
    _, hf, _, model = tiny
    monkeypatch.setattr(model, "generation_config", dataclasses.replace(model.generation_config, eos_token_id=eos))
    feats = features(2, seed=3)
    kw = {"num_beams": 5, "early_stopping": early_stopping, "length_penalty": length_penalty}
    ref = hf_generate(hf, feats, language="de", task="transcribe", eos_token_id=eos, **kw).numpy()
    out = model.generate(feats, language="de", task="transcribe", **kw)
    np.testing.assert_array_equal(out, ref)
    assert (out == EOT).any(), "some transcript should end early (and be right-padded)"


def test_language_detection_matches_hf(tiny):
    _, hf, _, model = tiny
    feats = features(2, seed=5)
    with torch.no_grad():
        ref_ids = hf.detect_language(torch.from_numpy(feats)).tolist()
    by_id = {v: k for k, v in hf.generation_config.lang_to_id.items()}
    assert model.detect_language(feats) == [by_id[i] for i in ref_ids]
    assert len(set(ref_ids)) > 1
    np.testing.assert_array_equal(model.generate(feats, task="transcribe"),
                                  hf_generate(hf, feats, task="transcribe").numpy())


@pytest.mark.parametrize("beams", [1, 3])
def test_timestamps_and_translate_match_hf(tiny, beams):
    _, hf, _, model = tiny
    feats = features(2 if beams == 1 else 1, seed=7)
    ref = hf_generate(hf, feats, language="fr", task="translate", return_timestamps=True, num_beams=beams,
                      return_segments=True)
    out = model.generate(feats, language="fr", task="translate", return_timestamps=True, num_beams=beams,
                         return_segments=True)
    np.testing.assert_array_equal(out["sequences"], ref["sequences"].numpy())
    assert (out["sequences"] > NO_TIMESTAMPS).any()
    for segs, ref_segs in zip(out["segments"], ref["segments"]):
        assert len(segs) == len(ref_segs)
        for s, r in zip(segs, ref_segs):
            assert (s["start"], s["end"]) == (float(r["start"]), float(r["end"]))
            np.testing.assert_array_equal(s["tokens"], r["tokens"].numpy())


def test_long_form_batch_matches_hf(tiny):
    _, hf, _, model = tiny
    feats = features(2, frames=4500, seed=11)  # 45 s
    mask = np.ones((2, 4500), np.int64)
    mask[1, 3600:] = 0  # the second clip is 36 s, padded
    feats[1, :, 3600:] = 0.0
    ref = hf_generate(hf, feats, attention_mask=torch.from_numpy(mask), language="en", return_segments=True)
    out = model.generate(feats, attention_mask=mask, language="en", return_segments=True)
    np.testing.assert_array_equal(out["sequences"], ref["sequences"].numpy())
    for segs, ref_segs in zip(out["segments"], ref["segments"]):
        assert [(s["start"], s["end"]) for s in segs] == [(float(r["start"]), float(r["end"])) for r in ref_segs]
        assert max(s["end"] for s in segs) > 30.0


def test_english_only_checkpoint_prompt_and_errors(tiny, monkeypatch):
    """A `.en`-style generation config: no languages or tasks, the prompt from forced_decoder_ids."""
    _, hf, _, model = tiny
    hf_gc = copy.deepcopy(hf.generation_config)
    hf_gc.is_multilingual = False
    hf_gc.forced_decoder_ids = [[1, NO_TIMESTAMPS]]
    del hf_gc.lang_to_id, hf_gc.task_to_id
    monkeypatch.setattr(model, "generation_config", dataclasses.replace(
        model.generation_config, is_multilingual=False, forced_decoder_ids=[[1, NO_TIMESTAMPS]], lang_to_id=None,
        task_to_id=None))
    feats = features(1, seed=17)
    out = model.generate(feats, return_segments=True)
    assert out["prompt_ids"] == [[SOT, NO_TIMESTAMPS]]
    np.testing.assert_array_equal(out["sequences"], hf_generate(hf, feats, generation_config=hf_gc).numpy())
    with pytest.raises(ValueError, match="English-only"):
        model.generate(feats, language="en")
    with pytest.raises(ValueError, match="English-only"):
        model.transcribe(np.zeros(1600, np.float32), task="translate")


# ---- audio to text ----------------------------------------------------------------

def _stereo_wav(path, seconds, rate=44100, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * (300 * t + 400 * t ** 2 / seconds)) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 1200 * t) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="PCM_16")
    return path


def _reference_features(path, mels, long_form):
    """The HF way: soundfile, mono mean, scipy's polyphase resampler, WhisperFeatureExtractor."""
    from scipy.signal import resample_poly

    data, rate = sf.read(path, dtype="float64", always_2d=True)
    audio = resample_poly(data.mean(axis=1), 16000 // np.gcd(16000, rate), rate // np.gcd(16000, rate))
    fe = transformers.WhisperFeatureExtractor(feature_size=mels)
    kw = {"truncation": False, "padding": "longest"} if long_form else {}
    return fe(audio, sampling_rate=16000, return_tensors="np", **kw).input_features


def test_transcribe_stereo_44k_file_end_to_end(tiny, tmp_path):
    _, hf, tok, model = tiny
    wav = _stereo_wav(tmp_path / "stereo.wav", 4.0)
    ref_ids = hf_generate(hf, _reference_features(wav, 80, False), task="transcribe")
    ref_text = tok.batch_decode(ref_ids, skip_special_tokens=True)[0]
    text = model.transcribe(wav)
    assert text == ref_text and len(text) > 0
    ref_ids = hf_generate(hf, _reference_features(wav, 80, False), language="german", task="transcribe")
    assert model.transcribe(str(wav), language="german") == tok.batch_decode(ref_ids, skip_special_tokens=True)[0]


def test_transcribe_long_audio_segments_end_to_end(tiny, tmp_path):
    _, hf, tok, model = tiny
    wav = _stereo_wav(tmp_path / "long.wav", 45.0, rate=22050, seed=4)
    ref = hf_generate(hf, _reference_features(wav, 80, True), task="transcribe", language="en", return_segments=True)
    out = model.transcribe(wav, language="en", return_segments=True)
    assert out["language"] == "en"
    assert out["text"] == tok.batch_decode(ref["sequences"], skip_special_tokens=True)[0]
    ref_segs = ref["segments"][0]
    assert len(out["segments"]) == len(ref_segs) > 1
    for s, r in zip(out["segments"], ref_segs):
        assert (s["start"], s["end"]) == (float(r["start"]), float(r["end"]))
        assert s["text"] == tok.decode(r["tokens"], skip_special_tokens=True)


def test_kiln_run_prints_the_transcript(tiny, tmp_path, capsys):
    from kiln.cli_transcribe import transcribe_main

    path, _, _, model = tiny
    wav = _stereo_wav(tmp_path / "a.wav", 2.0, seed=9)
    run = subprocess.run([sys.executable, "-m", "kiln.cli", "run", str(path), str(wav), "--language", "en"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == model.transcribe(wav, language="en").strip() != ""
    args = argparse.Namespace(model=str(path), inputs=[str(tmp_path / "missing.wav")], language=None,
                              task="transcribe", device="cpu", dtype="float32")
    assert transcribe_main(args) == 2
    assert "missing.wav" in capsys.readouterr().err


def test_bad_audio_raises_named_errors(tiny, tmp_path):
    _, _, _, model = tiny
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(AudioError, match="empty"):
        model.transcribe(empty)
    with pytest.raises(AudioError, match="cannot decode"):
        model.transcribe(junk)
    with pytest.raises(AudioError, match="empty"):
        model.transcribe(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        model.transcribe(np.array([0.0, np.nan, 0.1], np.float32))
    with pytest.raises(ValueError, match="input_features"):
        model.encode(np.zeros((1, 80, 2999), np.float32))
    with pytest.raises(ValueError, match="language"):
        model.generate(features(1), language="klingon")


# ---- other sizes --------------------------------------------------------------------

def test_128_mel_untied_checkpoint_with_legacy_prompt(tmp_path):
    """large-v3's 128 mel bins, an untied output projection, and forced_decoder_ids with language detection."""
    tok = make_tokenizer()
    hf = make_checkpoint(tmp_path, tok, d_model=32, heads=(2, 2), layers=1, ffn=64, mels=128, tie=False,
                         legacy_prompt=True, seed=3)
    model = load_whisper(tmp_path)
    assert "proj_out.weight" in model.params
    feats = features(2, mels=128, seed=13)
    ids = np.array([[SOT, FIRST_LANG, TRANSCRIBE, NO_TIMESTAMPS, 70, 80]] * 2)
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(feats), decoder_input_ids=torch.from_numpy(ids))
    out = model(input_features=feats, decoder_input_ids=ids)
    np.testing.assert_allclose(out["encoder_last_hidden_state"], ref.encoder_last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["logits"], ref.logits.numpy(), atol=1e-4)
    np.testing.assert_array_equal(model.generate(feats), hf_generate(hf, feats).numpy())
    wav = _stereo_wav(tmp_path / "clip.wav", 3.0, seed=2)
    ref_ids = hf_generate(hf, _reference_features(wav, 128, False))
    assert model.transcribe(wav) == tok.batch_decode(ref_ids, skip_special_tokens=True)[0]
