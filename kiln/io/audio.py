"""Audio loading for speech models: read, mix down to mono, resample.

``load_audio`` turns a file (WAV / FLAC / OGG, anything libsndfile reads) or an
in-memory array into a 1-D ``float32`` waveform at ``target_rate`` Hz
(16 kHz by default, what Whisper expects).

* Files are read with ``soundfile`` as float64 in [-1, 1] (integer PCM is
  scaled by libsndfile); the file's own sample rate is used.
* Multichannel audio is mixed down to mono by the mean over channels.
* Resampling uses ``scipy.signal.resample_poly`` with the gcd-reduced ratio
  ``target/source`` (a polyphase FIR with a Kaiser window, i.e. a real
  anti-aliasing low-pass filter, not interpolation or decimation).
  The output length is ``ceil(n * up / down)``.
* Nothing is clipped or truncated; bad input raises :class:`AudioError`
  naming what is wrong and what was expected.

Array input
-----------
* 1-D arrays are mono samples.
* 2-D arrays are multichannel. Both layouts are accepted: ``(samples,
  channels)`` (soundfile's layout) and ``(channels, samples)`` (torch /
  librosa's layout). Unless ``channel_axis`` is given, the channel axis is the
  *shorter* axis, and it must have at most :data:`MAX_CHANNELS` entries and be
  strictly shorter than the other; otherwise (e.g. a ``(2, 2)`` or
  ``(100, 200)`` array) the layout is ambiguous and ``AudioError`` asks for
  ``channel_axis``.
* Float arrays are taken as they are (expected range [-1, 1], not enforced).
  Integer PCM arrays are scaled to [-1, 1): signed ``intN`` by ``2**(N-1)``,
  ``uint8`` as ``(x - 128) / 128`` (the WAV convention).
* ``sampling_rate`` is the rate of the array; ``None`` means it is already at
  ``target_rate``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from kiln.errors import AudioError

__all__ = ["AudioError", "load_audio", "resample", "to_mono", "MAX_CHANNELS"]

#: Largest channel count accepted when the channel axis of a 2-D array is
#: detected automatically (pass ``channel_axis`` to go beyond it).
MAX_CHANNELS = 32


# ----------------------------------------------------------------------------
# helpers


def _check_rate(rate: Any, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer, float, np.floating)):
        raise AudioError(f"{what} must be a positive integer number of Hz, got {rate!r}")
    if isinstance(rate, (float, np.floating)):
        if not math.isfinite(rate) or rate != int(rate):
            raise AudioError(f"{what} must be a positive integer number of Hz, got {rate!r}")
    rate = int(rate)
    if rate <= 0:
        raise AudioError(f"{what} must be a positive integer number of Hz, got {rate}")
    return rate


def _to_float(arr: np.ndarray, what: str) -> np.ndarray:
    """Convert samples to float64, scaling integer PCM to [-1, 1)."""
    dt = arr.dtype
    if dt.kind == "f":
        return arr.astype(np.float64, copy=False)
    if dt.kind == "i":
        return arr.astype(np.float64) / float(2 ** (8 * dt.itemsize - 1))
    if dt.kind == "u" and dt.itemsize == 1:
        return (arr.astype(np.float64) - 128.0) / 128.0
    raise AudioError(
        f"{what} has dtype {dt}; expected a float array, signed integer PCM "
        f"(int8/int16/int32/int64) or uint8 PCM"
    )


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        raise AudioError(
            f"{what} contains non-finite samples ({n_nan} NaN, {n_inf} Inf out of {x.size}); "
            f"expected finite values"
        )


def to_mono(x: np.ndarray, channel_axis: int | None = None, *, what: str = "audio array") -> np.ndarray:
    """Mix a 1-D or 2-D sample array down to 1-D mono (mean over channels).

    See the module docstring for how the channel axis of a 2-D array is found.
    """
    if x.ndim == 1:
        if channel_axis not in (None, 0, -1):
            raise AudioError(f"channel_axis={channel_axis} given for a 1-D {what} of shape {x.shape}")
        return x
    if x.ndim != 2:
        raise AudioError(
            f"{what} has {x.ndim} dimensions (shape {x.shape}); expected 1-D (samples,) "
            f"or 2-D (samples, channels) / (channels, samples)"
        )
    if channel_axis is None:
        n0, n1 = x.shape
        short, long_ = (0, 1) if n0 < n1 else (1, 0)
        if n0 == n1 or x.shape[short] > MAX_CHANNELS:
            raise AudioError(
                f"cannot tell the channel axis of the 2-D {what} with shape {x.shape}: expected "
                f"(samples, channels) or (channels, samples) with at most {MAX_CHANNELS} channels "
                f"on the shorter axis; pass channel_axis=0 or 1"
            )
        channel_axis = short
    elif channel_axis not in (0, 1, -1, -2):
        raise AudioError(f"channel_axis must be 0 or 1 for a 2-D {what}, got {channel_axis}")
    if x.shape[channel_axis] == 0:
        raise AudioError(f"{what} of shape {x.shape} has zero channels")
    return x.mean(axis=channel_axis)


def resample(x: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D float signal with ``scipy.signal.resample_poly``.

    The ratio is reduced by the gcd (44100 -> 16000 is up=160, down=441).
    Returns float64; the input is returned unchanged when the rates agree.
    """
    orig_rate = _check_rate(orig_rate, "orig_rate")
    target_rate = _check_rate(target_rate, "target_rate")
    if orig_rate == target_rate:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError as e:  # pragma: no cover - scipy is one of kiln's own dependencies
        raise ImportError(
            f"resampling {orig_rate} Hz -> {target_rate} Hz needs scipy, one of kiln's dependencies: run "
            f"`pip install -e .` in the kiln checkout (or `pip install scipy`)"
        ) from e
    g = math.gcd(orig_rate, target_rate)
    up, down = target_rate // g, orig_rate // g
    return resample_poly(np.asarray(x, dtype=np.float64), up, down)


def _read_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise AudioError(f"audio file not found: {p!r}")
    if os.path.isdir(p):
        raise AudioError(f"audio path is a directory, expected a file: {p!r}")
    if os.path.getsize(p) == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p!r}; expected WAV/FLAC/OGG data")
    from kiln.extras import require

    # the hint names the checkout's extra: the PyPI project "kiln" is an unrelated library
    sf = require("soundfile", "reading audio files")
    try:
        data, rate = sf.read(p, dtype="float64", always_2d=True)
    except Exception as e:  # libsndfile reports unreadable data as LibsndfileError/RuntimeError
        raise AudioError(
            f"cannot decode {p!r} as audio (expected a format libsndfile reads, e.g. WAV/FLAC/OGG): {e}"
        ) from e
    if data.shape[0] == 0:
        raise AudioError(f"audio file {p!r} has a valid header but contains no samples")
    return data, int(rate)


# ----------------------------------------------------------------------------
# public entry point


def load_audio(
    path_or_array: str | os.PathLike | np.ndarray,
    sampling_rate: int | None = None,
    target_rate: int = 16000,
    *,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Load audio as a 1-D float32 mono waveform at ``target_rate`` Hz.

    Args:
        path_or_array: a file path (str / ``os.PathLike``; any format
            libsndfile reads: WAV, FLAC, OGG, ...) or an array of samples
            (1-D mono, or 2-D multichannel in either layout; see the module
            docstring).
        sampling_rate: for arrays, the rate of the samples (``None``: already
            at ``target_rate``). For files the file's rate is used; if
            ``sampling_rate`` is also given it must agree with the file.
        target_rate: output rate in Hz (16 kHz for Whisper).
        channel_axis: for 2-D arrays, which axis holds the channels
            (auto-detected when ``None``). Ignored for files (soundfile always
            yields (samples, channels)).

    Raises:
        AudioError: missing / empty / undecodable file, zero-length or
            non-finite samples, wrong ndim, ambiguous channel layout, bad
            sample rate.
    """
    target_rate = _check_rate(target_rate, "target_rate")

    if isinstance(path_or_array, (str, os.PathLike)):
        data, file_rate = _read_file(path_or_array)
        what = f"audio file {os.fspath(path_or_array)!r}"
        if sampling_rate is not None and _check_rate(sampling_rate, "sampling_rate") != file_rate:
            raise AudioError(
                f"sampling_rate={sampling_rate} was given but {what} is sampled at {file_rate} Hz; "
                f"leave sampling_rate=None for files"
            )
        rate = file_rate
        _check_finite(data, what)
        mono = data.mean(axis=1)
    else:
        if isinstance(path_or_array, (bytes, bytearray, memoryview)):
            raise AudioError(
                f"got {type(path_or_array).__name__}; expected a file path or a NumPy array of samples "
                f"(decode in-memory files with soundfile first)"
            )
        if isinstance(path_or_array, (np.ndarray, np.generic)):
            arr = np.asarray(path_or_array)
        elif isinstance(path_or_array, (list, tuple)):
            arr = np.asarray(path_or_array)
        else:
            raise AudioError(
                f"got {type(path_or_array).__name__}; expected a file path (str / os.PathLike) "
                f"or a NumPy array of samples"
            )
        what = f"audio array of shape {arr.shape}"
        if arr.ndim not in (1, 2):
            raise AudioError(
                f"{what} has {arr.ndim} dimensions; expected 1-D (samples,) or 2-D "
                f"(samples, channels) / (channels, samples)"
            )
        if arr.size == 0:
            raise AudioError(f"{what} is empty (zero samples); expected at least one sample")
        rate = target_rate if sampling_rate is None else _check_rate(sampling_rate, "sampling_rate")
        x = _to_float(arr, what)
        _check_finite(x, what)
        mono = to_mono(x, channel_axis, what=what)

    out = resample(mono, rate, target_rate)
    return np.ascontiguousarray(out, dtype=np.float32)
