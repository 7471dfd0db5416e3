"""Whisper's log-mel spectrogram front end, in NumPy.

Matches ``transformers.WhisperFeatureExtractor`` (and OpenAI's
``whisper.audio.log_mel_spectrogram``) step by step:

1. (``pad_or_trim=True``) zero-pad or trim the waveform to
   ``chunk_length * sampling_rate`` samples (30 s = 480 000 samples) -- the
   only truncation done anywhere in this module;
2. centered STFT: reflect-pad ``n_fft // 2`` samples on both ends, frames of
   ``n_fft`` samples every ``hop_length`` samples, periodic Hann window;
3. power spectrum ``|X|^2`` of the ``n_fft // 2 + 1`` one-sided bins;
4. mel projection with a Slaney-normalized filter bank on the Slaney mel
   scale (librosa's ``filters.mel(htk=False, norm="slaney")``) from 0 Hz to
   ``sampling_rate / 2``;
5. ``log10(max(mel, 1e-10))``; the last STFT frame is dropped, so a waveform
   of ``n`` samples gives ``n // hop_length`` frames (3000 for 30 s);
6. dynamic-range floor ``max(x, x.max() - 8)`` with the max over the whole
   spectrogram of one example, then ``(x + 4) / 4``.

Steps 1-5 are :func:`log10_mel_spectrogram` (pre-normalization values),
step 6 is :func:`normalize_log_mel`, and :func:`log_mel_spectrogram` does
all of them. The STFT is computed in float64 in blocks of frames, so memory
stays bounded for long (unpadded) audio; outputs are float32.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from kiln.io.audio import AudioError

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "CHUNK_LENGTH",
    "N_SAMPLES",
    "N_FRAMES",
    "hertz_to_mel",
    "mel_to_hertz",
    "mel_filter_bank",
    "hann_window",
    "pad_or_trim",
    "log10_mel_spectrogram",
    "normalize_log_mel",
    "log_mel_spectrogram",
    "whisper_input_features",
]

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a 30 s window

_MEL_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # in log10 units (80 dB)
_FRAME_BLOCK = 2048  # STFT frames per block (bounds temporary memory)

# Slaney mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15.0
_LOGSTEP = np.log(6.4) / 27.0


def hertz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Hz -> mel on the Slaney (Auditory Toolbox / librosa ``htk=False``) scale."""
    f = np.asarray(freq, dtype=np.float64)
    mel = f / _F_SP
    log_region = f >= _MIN_LOG_HZ
    return np.where(log_region, _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP, mel)


def mel_to_hertz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hertz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    freq = m * _F_SP
    log_region = m >= _MIN_LOG_MEL
    return np.where(log_region, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), freq)


@functools.lru_cache(maxsize=16)
def _mel_filter_bank_cached(n_mels: int, n_fft: int, sampling_rate: int, fmin: float, fmax: float) -> np.ndarray:
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0.0, sampling_rate / 2, n_freqs)
    # n_mels + 2 band edges, equally spaced on the mel scale
    edges_hz = mel_to_hertz(np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)  # [n_mels + 1]
    ramps = edges_hz[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_freqs]
    lower = -ramps[:-2] / widths[:-1, None]  # rising edge of each triangle
    upper = ramps[2:] / widths[1:, None]  # falling edge
    weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, n_freqs]
    # Slaney normalization: each triangle has unit area in Hz
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


def mel_filter_bank(
    n_mels: int = 80,
    n_fft: int = N_FFT,
    sampling_rate: int = SAMPLE_RATE,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Slaney-normalized triangular mel filter bank, float64 ``[n_mels, n_fft // 2 + 1]``.

    Same construction as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax,
    htk=False, norm="slaney")``, which produced Whisper's ``mel_filters.npz``.
    ``fmax`` defaults to ``sampling_rate / 2`` (8 kHz at 16 kHz, the value HF
    hard-codes). The returned array is read-only (it is cached).
    """
    if n_mels <= 0 or n_fft <= 0 or sampling_rate <= 0:
        raise ValueError(
            f"mel_filter_bank needs positive n_mels, n_fft, sampling_rate; got {n_mels}, {n_fft}, {sampling_rate}"
        )
    fmax = sampling_rate / 2 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sampling_rate / 2:
        raise ValueError(f"expected 0 <= fmin < fmax <= sampling_rate / 2 = {sampling_rate / 2}; got fmin={fmin}, fmax={fmax}")
    return _mel_filter_bank_cached(int(n_mels), int(n_fft), int(sampling_rate), float(fmin), float(fmax))


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window of length ``n`` (``torch.hann_window(n)``), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _as_waveform(audio, what: str = "audio") -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise AudioError(
            f"{what} must be a 1-D mono waveform, got shape {x.shape}; "
            f"mix down / resample with kiln.io.audio.load_audio first"
        )
    if x.dtype.kind != "f":
        raise AudioError(f"{what} must be a float waveform in [-1, 1], got dtype {x.dtype}; use load_audio to convert PCM")
    if x.size == 0:
        raise AudioError(f"{what} is empty (zero samples); expected at least one sample")
    if not np.all(np.isfinite(x)):
        raise AudioError(
            f"{what} contains {int(np.sum(~np.isfinite(x)))} non-finite samples (NaN/Inf); expected finite values"
        )
    return x


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or trim a 1-D waveform to exactly ``length`` samples.

    This is Whisper's 30 s window (480 000 samples at 16 kHz); audio beyond
    ``length`` is dropped, as in ``whisper.audio.pad_or_trim`` and HF's
    ``WhisperFeatureExtractor(truncation=True)``.
    """
    x = np.asarray(audio)
    if x.ndim != 1:
        raise AudioError(f"pad_or_trim expects a 1-D waveform, got shape {x.shape}")
    if length <= 0:
        raise ValueError(f"pad_or_trim length must be positive, got {length}")
    n = x.shape[0]
    if n > length:
        return x[:length]
    if n < length:
        return np.pad(x, (0, length - n))
    return x


def log10_mel_spectrogram(
    audio: np.ndarray,
    n_mels: int = 80,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    sampling_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Pre-normalization log-mel: ``log10(max(mel_power, 1e-10))``, float32 ``[n_mels, n // hop_length]``.

    Centered reflect-padded STFT with a periodic Hann window, power spectrum,
    Slaney mel bank; the last STFT frame is dropped (as Whisper does). No
    padding/trimming of the waveform is done here. The waveform needs more
    than ``n_fft // 2`` samples (the reflect padding) and at least
    ``hop_length`` samples (one frame).
    """
    x = _as_waveform(audio)
    n = x.shape[0]
    pad = n_fft // 2
    if n <= pad or n < hop_length:
        raise AudioError(
            f"audio has {n} samples; the unpadded log-mel needs more than n_fft // 2 = {pad} "
            f"and at least hop_length = {hop_length} samples (use pad_or_trim=True for short clips)"
        )
    filters = mel_filter_bank(n_mels, n_fft, sampling_rate)
    window = hann_window(n_fft)
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames_stft = 1 + (xp.shape[0] - n_fft) // hop_length  # == 1 + n // hop_length
    n_frames = n_frames_stft - 1  # Whisper drops the last frame
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop_length]
    out = np.empty((n_mels, n_frames), dtype=np.float64)
    for start in range(0, n_frames, _FRAME_BLOCK):
        stop = min(start + _FRAME_BLOCK, n_frames)
        spec = np.fft.rfft(frames[start:stop] * window, axis=-1)  # [blk, n_freqs]
        power = spec.real**2 + spec.imag**2
        out[:, start:stop] = filters @ power.T
    np.maximum(out, _MEL_FLOOR, out=out)
    np.log10(out, out=out)
    return out.astype(np.float32)


def normalize_log_mel(log_spec: np.ndarray) -> np.ndarray:
    """Whisper's normalization of a log10-mel: ``(max(x, x.max() - 8) + 4) / 4``.

    ``log_spec`` is ``[n_mels, frames]`` (max over all of it) or
    ``[batch, n_mels, frames]`` (max per example). Returns float32.
    """
    x = np.asarray(log_spec, dtype=np.float32)
    if x.ndim == 2:
        peak = x.max()
    elif x.ndim == 3:
        peak = x.max(axis=(1, 2), keepdims=True)
    else:
        raise ValueError(f"normalize_log_mel expects [n_mels, frames] or [batch, n_mels, frames], got shape {x.shape}")
    return ((np.maximum(x, peak - np.float32(_DYNAMIC_RANGE)) + np.float32(4.0)) / np.float32(4.0)).astype(np.float32)


def log_mel_spectrogram(
    audio: np.ndarray,
    n_mels: int = 80,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    sampling_rate: int = SAMPLE_RATE,
    chunk_length: int = CHUNK_LENGTH,
    pad_or_trim: bool = True,
) -> np.ndarray:
    """Whisper input features of one mono waveform, float32 ``[n_mels, frames]``.

    ``audio`` is a 1-D float waveform already at ``sampling_rate`` (use
    :func:`kiln.io.audio.load_audio`). With ``pad_or_trim=True`` the waveform
    is zero-padded / trimmed to ``chunk_length`` seconds first, giving exactly
    ``chunk_length * sampling_rate // hop_length`` frames (3000) -- equal to
    ``WhisperFeatureExtractor(feature_size=n_mels)(audio).input_features[0]``.
    With ``pad_or_trim=False`` (long-form transcription) all
    ``len(audio) // hop_length`` frames are returned, normalized with the max
    over the whole clip -- equal to HF's ``truncation=False, padding="longest"``.
    """
    x = _as_waveform(audio)
    if pad_or_trim:
        x = _pad_or_trim(x, chunk_length * sampling_rate)
    return normalize_log_mel(log10_mel_spectrogram(x, n_mels, n_fft, hop_length, sampling_rate))


_pad_or_trim = pad_or_trim  # the keyword argument above shadows the function


def whisper_input_features(
    audio_batch: Sequence[np.ndarray] | np.ndarray,
    n_mels: int = 80,
    *,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    sampling_rate: int = SAMPLE_RATE,
    chunk_length: int = CHUNK_LENGTH,
) -> np.ndarray:
    """Batch of Whisper input features, float32 ``[batch, n_mels, 3000]``.

    ``audio_batch`` is a sequence of 1-D waveforms (lengths may differ) or a
    2-D array ``[batch, samples]``. Each waveform is padded / trimmed to the
    30 s window and normalized on its own (per-example max), as HF does.
    """
    if isinstance(audio_batch, np.ndarray):
        if audio_batch.ndim != 2:
            raise AudioError(
                f"whisper_input_features expects a 2-D [batch, samples] array or a list of 1-D "
                f"waveforms, got an array of shape {audio_batch.shape}"
            )
        items = list(audio_batch)
    else:
        items = list(audio_batch)
    if not items:
        raise AudioError("whisper_input_features got an empty batch; expected at least one waveform")
    n_samples = chunk_length * sampling_rate
    n_frames = n_samples // hop_length
    out = np.empty((len(items), n_mels, n_frames), dtype=np.float32)
    for i, a in enumerate(items):
        x = _as_waveform(a, what=f"audio_batch[{i}]")
        out[i] = normalize_log_mel(
            log10_mel_spectrogram(_pad_or_trim(x, n_samples), n_mels, n_fft, hop_length, sampling_rate)
        )
    return out
