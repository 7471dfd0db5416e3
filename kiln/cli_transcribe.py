"""`kiln run <whisper-checkpoint> audio.wav ...`: print the transcription of each audio file."""

from __future__ import annotations

import sys

from kiln.io.audio import AudioError
from kiln.io.errors import CheckpointError


def transcribe_main(args) -> int:
    """args: .model (checkpoint dir or cached id), .inputs (audio paths), .language (None: detect),
    .task ("transcribe" / "translate"), .device, .dtype. One file prints its text; several files
    print "path: text" lines. Returns the exit status."""
    from kiln.models.whisper import load_whisper

    paths = list(args.inputs or [])
    if not paths:
        print("kiln run: give one or more audio files to transcribe (WAV, FLAC, OGG)", file=sys.stderr)
        return 2
    try:
        model = load_whisper(args.model, device=args.device, dtype=args.dtype)
    except CheckpointError as e:
        print(f"kiln run: {e}", file=sys.stderr)
        return 1
    status = 0
    for path in paths:
        try:
            text = model.transcribe(path, language=args.language, task=args.task)
        except (AudioError, ValueError) as e:
            print(f"kiln run: {path}: {e}", file=sys.stderr)
            status = 1
            continue
        print(text.strip() if len(paths) == 1 else f"{path}: {text.strip()}", flush=True)
    return status
