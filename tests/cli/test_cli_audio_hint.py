"""kiln/io/audio.py's hint for a missing soundfile names the checkout's extra (`pip install -e '.[audio]'`),
never `pip install 'kiln[audio]'`: the PyPI project called kiln is an unrelated library."""

from __future__ import annotations

import sys

import pytest

from kiln.extras import MissingExtraError
from kiln.io.audio import load_audio


def test_reading_a_file_without_soundfile_names_the_audio_extra(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF....WAVEfmt ")
    monkeypatch.setitem(sys.modules, "soundfile", None)       # import soundfile now fails as if missing
    with pytest.raises(MissingExtraError) as info:
        load_audio(path)
    msg = str(info.value)
    assert "reading audio files needs soundfile" in msg and "pip install -e '.[audio]'" in msg
    assert "pip install 'kiln[audio]'" not in msg and info.value.extra == "audio"
