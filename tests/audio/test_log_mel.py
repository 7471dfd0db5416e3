"""kiln.io.log_mel against HF transformers' WhisperFeatureExtractor.

HF is the reference only here (kiln never imports it). Two HF references:

* the public call ``WhisperFeatureExtractor(feature_size=n)(audio, ...)``,
  which uses torch's float32 STFT when torch is installed: max abs <= 1e-4;
* ``transformers.audio_utils.spectrogram`` (the float64 NumPy STFT of HF's
  numpy path) for the pre-normalization log10-mel: max abs <= 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank  # noqa: E402
from transformers.audio_utils import spectrogram as hf_spectrogram  # noqa: E402
from transformers.audio_utils import window_function as hf_window_function  # noqa: E402

from kiln.io.audio import AudioError  # noqa: E402
from kiln.io.log_mel import (  # noqa: E402
    N_FRAMES,
    N_SAMPLES,
    hann_window,
    log10_mel_spectrogram,
    log_mel_spectrogram,
    mel_filter_bank,
    normalize_log_mel,
    pad_or_trim,
    whisper_input_features,
)

SR = 16000
ATOL_HF = 1e-4


# ----------------------------------------------------------------------------
# synthetic signals (float32, like real decoded audio)


def sweep(seconds: float) -> np.ndarray:
    """Linear chirp 50 Hz -> 7.5 kHz over the clip, amplitude 0.5."""
    t = np.arange(int(seconds * SR)) / SR
    f0, f1 = 50.0, 7500.0
    return (0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))).astype(np.float32)


def white_noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(int(seconds * 10)).standard_normal(int(seconds * SR))).astype(np.float32)


def silence_then_tone(seconds: float) -> np.ndarray:
    """First half exact digital silence, second half a 440 Hz tone."""
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    x[: len(x) // 2] = 0.0
    return x.astype(np.float32)


SIGNALS = {"sweep": sweep, "noise": white_noise, "silence_tone": silence_then_tone}


@pytest.fixture(scope="module")
def hf_extractors():
    return {n: WhisperFeatureExtractor(feature_size=n) for n in (80, 128)}


def hf_features(fe, audio, **kw) -> np.ndarray:
    return fe(audio, sampling_rate=SR, return_tensors="np", **kw).input_features


def hf_log10_mel(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """HF's NumPy-path pre-normalization log10-mel (last frame dropped)."""
    filters = hf_mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SR,
        norm="slaney",
        mel_scale="slaney",
    )
    spec = hf_spectrogram(
        audio,
        hf_window_function(400, "hann"),
        frame_length=400,
        hop_length=160,
        power=2.0,
        mel_filters=filters,
        log_mel="log10",
    )
    return spec[:, :-1]


# ----------------------------------------------------------------------------
# building blocks


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filter_bank_matches_hf(n_mels):
    ref = hf_mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SR,
        norm="slaney",
        mel_scale="slaney",
    )  # HF layout [n_freqs, n_mels]
    ours = mel_filter_bank(n_mels)
    assert ours.shape == (n_mels, 201)
    np.testing.assert_allclose(ours, ref.T, rtol=0, atol=1e-12)
    # every filter is a non-empty triangle
    assert (ours.max(axis=1) > 0).all()


def test_hann_window_is_torch_periodic_hann():
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(hann_window(400), torch.hann_window(400, dtype=torch.float64).numpy(), atol=1e-15)


def test_pad_or_trim():
    x = np.arange(1, 11, dtype=np.float32)
    padded = pad_or_trim(x, 15)
    np.testing.assert_array_equal(padded, np.concatenate([x, np.zeros(5, np.float32)]))
    np.testing.assert_array_equal(pad_or_trim(x, 4), x[:4])
    np.testing.assert_array_equal(pad_or_trim(x, 10), x)
    assert pad_or_trim(np.zeros(5, np.float32)).shape == (N_SAMPLES,)
    with pytest.raises(AudioError, match="1-D"):
        pad_or_trim(np.zeros((2, 5)))


# ----------------------------------------------------------------------------
# the 30 s window, against the public HF call


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", [1, 30, 45])
@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_features_match_hf(hf_extractors, signal, seconds, n_mels):
    audio = SIGNALS[signal](seconds)
    ours = log_mel_spectrogram(audio, n_mels=n_mels)
    ref = hf_features(hf_extractors[n_mels], audio)  # pads / truncates to 30 s
    assert ours.dtype == np.float32
    assert ours.shape == (n_mels, N_FRAMES) and ref.shape == (1, n_mels, N_FRAMES)
    err = np.abs(ours - ref[0]).max()
    assert err <= ATOL_HF, f"max abs error {err:.3g}"


def test_45s_padded_is_the_first_30s(hf_extractors):
    audio = white_noise(45)
    full = log_mel_spectrogram(audio)
    np.testing.assert_array_equal(full, log_mel_spectrogram(audio[:N_SAMPLES]))
    # and the features really depend on the trimmed-away part being gone:
    assert not np.allclose(full, log_mel_spectrogram(audio[N_SAMPLES - 16000 :]))


def test_short_clip_below_one_frame(hf_extractors):
    # 37 samples is shorter than the reflect padding; padding to 30 s handles it
    audio = sweep(1)[:37]
    ours = log_mel_spectrogram(audio)
    err = np.abs(ours - hf_features(hf_extractors[80], audio)[0]).max()
    assert err <= ATOL_HF


# ----------------------------------------------------------------------------
# long form (pad_or_trim=False)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("n_samples", [45 * SR, 45 * SR + 123, SR + 77])
def test_unpadded_matches_hf_longest(hf_extractors, n_samples, n_mels):
    audio = np.concatenate([sweep(45), white_noise(1)])[:n_samples]
    ours = log_mel_spectrogram(audio, n_mels=n_mels, pad_or_trim=False)
    assert ours.shape == (n_mels, n_samples // 160)  # 4500 frames for 45 s
    ref = hf_features(hf_extractors[n_mels], audio, truncation=False, padding="longest")
    assert ref.shape == (1, n_mels, n_samples // 160)
    err = np.abs(ours - ref[0]).max()
    assert err <= ATOL_HF, f"max abs error {err:.3g}"


@pytest.mark.parametrize("signal", ["sweep", "noise"])
def test_unpadded_first_30s_pre_normalization_consistent(signal):
    """What is compared: the log10-mel *before* the max-8 floor and (x+4)/4.

    Frame t is centred on sample 160 t and covers samples [160 t - 200,
    160 t + 200). For t <= 2998 that window lies inside the first 480 000
    samples, so the long-form (45 s) and the trimmed 30 s spectrograms must
    agree there. Frame 2999 reaches sample 480 040: in the long form it sees
    real audio, in the trimmed form reflect padding, so it must differ. The
    normalized features are not compared frame-by-frame, because their max
    (and hence the floor) is taken over different spans.
    """
    audio = SIGNALS[signal](45)
    raw_long = log10_mel_spectrogram(audio)
    raw_30 = log10_mel_spectrogram(pad_or_trim(audio))
    assert raw_long.shape == (80, 4500) and raw_30.shape == (80, N_FRAMES)
    np.testing.assert_allclose(raw_long[:, :2999], raw_30[:, :2999], rtol=0, atol=1e-6)
    assert np.abs(raw_long[:, 2999] - raw_30[:, 2999]).max() > 1e-3
    # the pre-normalization values are HF's NumPy-path values (float64 STFT)
    np.testing.assert_allclose(raw_long, hf_log10_mel(audio, 80), rtol=0, atol=1e-5)
    np.testing.assert_allclose(raw_30, hf_log10_mel(pad_or_trim(audio), 80), rtol=0, atol=1e-5)
    # and the normalized long form is the normalization of exactly these values
    long_feats = log_mel_spectrogram(audio, pad_or_trim=False)
    peak = raw_long.max()
    np.testing.assert_allclose(long_feats, (np.maximum(raw_long, peak - 8.0) + 4.0) / 4.0, atol=1e-6)


# ----------------------------------------------------------------------------
# batches


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batch_matches_hf(hf_extractors, n_mels):
    batch = [sweep(1), white_noise(45), silence_then_tone(30), 0.01 * sweep(2)]
    ours = whisper_input_features(batch, n_mels=n_mels)
    assert ours.shape == (4, n_mels, N_FRAMES) and ours.dtype == np.float32
    ref = hf_features(hf_extractors[n_mels], batch)
    assert ref.shape == ours.shape
    err = np.abs(ours - ref).max()
    assert err <= ATOL_HF, f"max abs error {err:.3g}"
    # normalization is per example: the quiet clip is not floored by the loud ones
    np.testing.assert_array_equal(ours[3], log_mel_spectrogram(batch[3], n_mels=n_mels))


def test_batch_2d_array_and_normalize_3d():
    arr = np.stack([sweep(1), white_noise(1)])
    feats = whisper_input_features(arr)
    raw = np.stack([log10_mel_spectrogram(pad_or_trim(a)) for a in arr])
    np.testing.assert_array_equal(feats, normalize_log_mel(raw))
    with pytest.raises(AudioError, match="2-D"):
        whisper_input_features(np.zeros(100, np.float32))
    with pytest.raises(AudioError, match="empty batch"):
        whisper_input_features([])
    with pytest.raises(AudioError, match=r"audio_batch\[1\]"):
        whisper_input_features([sweep(1), np.full(10, np.nan, np.float32)])


# ----------------------------------------------------------------------------
# bad input


def test_bad_input_errors():
    with pytest.raises(AudioError, match="1-D mono"):
        log_mel_spectrogram(np.zeros((2, 16000), np.float32))
    with pytest.raises(AudioError, match="zero samples"):
        log_mel_spectrogram(np.zeros(0, np.float32))
    x = sweep(1)
    x[5] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        log_mel_spectrogram(x)
    with pytest.raises(AudioError, match="dtype int16"):
        log_mel_spectrogram(np.zeros(16000, np.int16))
    with pytest.raises(AudioError, match="more than n_fft // 2 = 200"):
        log_mel_spectrogram(np.zeros(150, np.float32), pad_or_trim=False)
    with pytest.raises(ValueError, match="fmin < fmax"):
        mel_filter_bank(80, fmax=9000.0)
