"""`kiln run <whisper-checkpoint> audio.wav ...`: print the transcription of each audio file."""

from __future__ import annotations

import os
import sys

from kiln.cli_common import fail


def transcribe_main(args) -> int:
    """args: .model (checkpoint dir or cached id), .inputs (audio paths), .language (None: detect),
    .task ("transcribe" / "translate"), .device, .dtype. One file prints its text; several files
    print "path: text" lines. Every file is checked (exists, decodable) before the model loads;
    a bad one prints one error line and returns 2. Errors loading the checkpoint propagate (the
    CLI prints them as one line)."""
    from kiln.errors import AudioError
    from kiln.extras import require

    paths = list(args.inputs or [])
    if not paths:
        return fail("run", "give one or more audio files to transcribe (WAV, FLAC, OGG)")
    soundfile = require("soundfile", "reading audio files")
    for path in paths:
        if not os.path.isfile(path):
            what = "is a directory, expected an audio file" if os.path.isdir(path) else "not found"
            return fail("run", f"audio file {path!r} {what}")
        try:
            soundfile.info(path)
        except Exception as e:  # libsndfile reports unreadable data as LibsndfileError / RuntimeError
            return fail("run", f"cannot decode {path!r} as audio (expected WAV, FLAC, OGG or another format "
                               f"libsndfile reads): {' '.join(str(e).split())}")

    import kiln

    model = kiln.load(args.model, device=args.device, dtype=args.dtype)  # HF or CTranslate2 Whisper
    status = 0
    for path in paths:
        try:
            text = model.transcribe(path, language=args.language, task=args.task)
        except AudioError as e:
            status = fail("run", f"{path}: {e}")
            continue
        print(text.strip() if len(paths) == 1 else f"{path}: {text.strip()}", flush=True)
    return status
