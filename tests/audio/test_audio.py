"""kiln.io.audio.load_audio against independent references.

References used here are not the code under test: int PCM values written by
soundfile and scaled by hand, analytic sine waves evaluated at the 16 kHz
sample times (mixdown + resampling of a two-tone stereo file), and spectral
peaks of the output (anti-aliasing).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from kiln.io.audio import AudioError, load_audio  # noqa: E402

SR_IN = 44100
SR_OUT = 16000


def _stereo_two_tone(n: int, sr: int) -> np.ndarray:
    """(samples, 2): left 440 Hz amp 0.5, right 1 kHz amp 0.3 phase 0.7."""
    t = np.arange(n) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t + 0.7)], axis=1)


def _expected_mono_two_tone(m: int, sr: int) -> np.ndarray:
    """The analytic mean of the two channels, sampled at ``sr``."""
    t = np.arange(m) / sr
    return 0.5 * (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1000 * t + 0.7))


def _peak_at(y: np.ndarray, sr: int, freq: float) -> float:
    spec = np.abs(np.fft.rfft(y.astype(np.float64) * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1.0 / sr)
    band = np.abs(freqs - freq) <= 20.0
    return float(spec[band].max())


# ----------------------------------------------------------------------------
# files: mono at 16 kHz (no resampling) round-trip exactly


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16")])
def test_mono_16k_int16_file_scaled_exactly(tmp_path, fmt, subtype):
    rng = np.random.default_rng(0)
    q = rng.integers(-32768, 32768, size=12345, dtype=np.int16)
    path = tmp_path / f"mono.{fmt.lower()}"
    sf.write(path, q, SR_OUT, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.shape == (12345,)
    np.testing.assert_array_equal(y, (q.astype(np.float64) / 32768.0).astype(np.float32))


def test_mono_16k_float_wav_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    x = (0.4 * rng.standard_normal(SR_OUT)).astype(np.float32)
    path = tmp_path / "mono_float.wav"
    sf.write(path, x, SR_OUT, subtype="FLOAT")
    y = load_audio(str(path))  # str path as well as pathlib
    np.testing.assert_array_equal(y, x)


# ----------------------------------------------------------------------------
# files: stereo 44.1 kHz -> mono 16 kHz, against the analytic signal


@pytest.mark.parametrize(
    "fmt,subtype,atol",
    [("WAV", "FLOAT", 1e-3), ("WAV", "PCM_16", 1e-3), ("FLAC", "PCM_16", 1e-3), ("FLAC", "PCM_24", 1e-3)],
)
def test_stereo_44k_mixdown_and_resample_matches_analytic(tmp_path, fmt, subtype, atol):
    n = 2 * SR_IN
    path = tmp_path / f"stereo.{fmt.lower()}"
    sf.write(path, _stereo_two_tone(n, SR_IN), SR_IN, format=fmt, subtype=subtype)
    y = load_audio(path)
    # polyphase resampling 44100 -> 16000 (up 160, down 441) gives ceil(n*160/441) samples
    assert y.shape == (math.ceil(n * 160 / 441),)
    assert y.dtype == np.float32
    expected = _expected_mono_two_tone(len(y), SR_OUT)
    edge = 800  # 50 ms at each end: the FIR filter's start-up/tail transients
    err = np.abs(y[edge:-edge] - expected[edge:-edge])
    assert err.max() < atol, err.max()
    # both tones keep their frequency and the amplitude of the mixdown (0.25, 0.15)
    fft_len = len(y)
    amp = 2 * np.abs(np.fft.rfft(y.astype(np.float64))) / fft_len
    freqs = np.fft.rfftfreq(fft_len, 1 / SR_OUT)
    assert amp[np.argmin(np.abs(freqs - 440))] == pytest.approx(0.25, abs=5e-3)
    assert amp[np.argmin(np.abs(freqs - 1000))] == pytest.approx(0.15, abs=5e-3)


def test_file_and_array_paths_agree(tmp_path):
    st = _stereo_two_tone(SR_IN, SR_IN)
    path = tmp_path / "stereo.wav"
    sf.write(path, st, SR_IN, subtype="FLOAT")
    from_file = load_audio(path)
    from_array = load_audio(st.astype(np.float32), sampling_rate=SR_IN)
    np.testing.assert_allclose(from_file, from_array, atol=1e-7)


@pytest.mark.skipif("OGG" not in sf.available_formats(), reason="libsndfile built without OGG")
def test_ogg_vorbis_tone_frequency_preserved(tmp_path):
    t = np.arange(2 * 22050) / 22050
    path = tmp_path / "tone.ogg"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 660 * t), 22050, format="OGG", subtype="VORBIS")
    y = load_audio(path)
    assert abs(len(y) - 2 * SR_OUT) <= 1
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / SR_OUT)
    assert abs(freqs[np.argmax(spec)] - 660) < 2.0


def test_resampler_is_anti_aliased():
    # 12 kHz is above the 8 kHz Nyquist of the output; naive decimation would
    # fold it to 16 - 12 = 4 kHz at full strength.
    t = np.arange(SR_IN) / SR_IN
    x = np.sin(2 * np.pi * 12000 * t) + np.sin(2 * np.pi * 1000 * t)
    y = load_audio(x, sampling_rate=SR_IN)
    assert _peak_at(y, SR_OUT, 4000) < 1e-2 * _peak_at(y, SR_OUT, 1000)


def test_upsampling_8k_preserves_tone():
    t = np.arange(8000) / 8000
    y = load_audio(0.5 * np.sin(2 * np.pi * 300 * t), sampling_rate=8000)
    assert y.shape == (16000,)
    expected = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert np.abs(y[800:-800] - expected[800:-800]).max() < 2e-3


# ----------------------------------------------------------------------------
# arrays


def test_array_layouts_mix_down_to_the_mean():
    rng = np.random.default_rng(2)
    sc = rng.standard_normal((1000, 2)).astype(np.float32)  # (samples, channels)
    expected = sc.astype(np.float64).mean(axis=1).astype(np.float32)
    np.testing.assert_allclose(load_audio(sc), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(sc.T), expected, atol=1e-7)  # (channels, samples)
    np.testing.assert_allclose(load_audio(sc.T.copy(), channel_axis=0), expected, atol=1e-7)
    mono = rng.standard_normal(500)
    np.testing.assert_allclose(load_audio(mono), mono.astype(np.float32))
    np.testing.assert_allclose(load_audio(mono.tolist()), mono.astype(np.float32))


def test_int_pcm_arrays_are_scaled():
    q16 = np.array([-32768, -1, 0, 1, 16384, 32767], dtype=np.int16)
    np.testing.assert_array_equal(load_audio(q16), (q16 / 32768.0).astype(np.float32))
    q32 = np.array([-(2**31), 0, 2**30], dtype=np.int32)
    np.testing.assert_array_equal(load_audio(q32), np.array([-1.0, 0.0, 0.5], dtype=np.float32))
    u8 = np.array([0, 128, 192], dtype=np.uint8)
    np.testing.assert_array_equal(load_audio(u8), np.array([-1.0, 0.0, 0.5], dtype=np.float32))


def test_array_at_target_rate_needs_no_sampling_rate():
    x = np.linspace(-1, 1, 321, dtype=np.float32)
    np.testing.assert_array_equal(load_audio(x), x)
    np.testing.assert_array_equal(load_audio(x, sampling_rate=16000), x)


# ----------------------------------------------------------------------------
# bad input


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)"):
        load_audio(p)


def test_random_bytes_named_wav(tmp_path):
    p = tmp_path / "noise.wav"
    p.write_bytes(np.random.default_rng(3).bytes(4096))
    with pytest.raises(AudioError, match="cannot decode") as ei:
        load_audio(p)
    assert "noise.wav" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_header_only_wav_has_no_samples(tmp_path):
    p = tmp_path / "zero_frames.wav"
    sf.write(p, np.zeros((0, 1)), SR_OUT, subtype="PCM_16")
    assert os.path.getsize(p) > 0
    with pytest.raises(AudioError, match="no samples"):
        load_audio(p)


def test_nan_in_float_wav_file(tmp_path):
    x = np.zeros(100, dtype=np.float32)
    x[7] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, SR_OUT, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN"):
        load_audio(p)


def test_file_rate_mismatch(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, np.zeros(100), 22050)
    with pytest.raises(AudioError, match="22050 Hz"):
        load_audio(p, sampling_rate=16000)


def test_zero_length_array():
    with pytest.raises(AudioError, match="zero samples"):
        load_audio(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="zero samples"):
        load_audio(np.zeros((0, 2), dtype=np.float32), sampling_rate=44100)


@pytest.mark.parametrize("bad,word", [(np.nan, "1 NaN"), (np.inf, "1 Inf")])
def test_non_finite_array(bad, word):
    x = np.zeros(1000, dtype=np.float32)
    x[10] = bad
    with pytest.raises(AudioError, match=word):
        load_audio(x)


def test_wrong_ndim_and_ambiguous_layout():
    with pytest.raises(AudioError, match="3 dimensions"):
        load_audio(np.zeros((2, 100, 2), dtype=np.float32))
    with pytest.raises(AudioError, match="0 dimensions"):
        load_audio(np.float32(0.5))
    with pytest.raises(AudioError, match="channel axis"):
        load_audio(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(AudioError, match="channel axis"):
        load_audio(np.zeros((100, 200), dtype=np.float32))  # 100 "channels" is implausible


def test_bad_rates_and_types():
    x = np.zeros(100, dtype=np.float32)
    for rate in (0, -8000, 44100.5, "16k"):
        with pytest.raises(AudioError, match="sampling_rate"):
            load_audio(x, sampling_rate=rate)
    with pytest.raises(AudioError, match="target_rate"):
        load_audio(x, target_rate=0)
    with pytest.raises(AudioError, match="dtype complex"):
        load_audio(np.zeros(10, dtype=np.complex64))
    with pytest.raises(AudioError, match="expected a file path"):
        load_audio(b"RIFF....WAVE")
