"""Fixtures for the CLI tests; cli_helpers.py (beside this file) runs `kiln` in a subprocess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A directory with checkpoints that have only a config.json (enough for every check that runs
    before the weights load) and some bad input files."""
    d = tmp_path_factory.mktemp("cli")
    for name, model_type in (("llama", "llama"), ("whisper", "whisper"), ("bert", "bert"), ("mamba", "mamba")):
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps({"model_type": model_type}))
    (d / "noconfig").mkdir()
    (d / "badjson").mkdir()
    (d / "badjson" / "config.json").write_text("{not json")
    (d / "junk.wav").write_text("this is not audio\n")
    (d / "empty.wav").write_bytes(b"")
    (d / "graph.json").write_text("[]")
    (d / "junk.gguf").write_bytes(b"GGUF but not really")
    return d
