"""Fixtures: tiny random Llama-family checkpoints on disk (see llama_checkpoints.py), built once per session."""

from __future__ import annotations

import json

import pytest

from llama_checkpoints import save_checkpoint, train_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(family, **config_overrides) -> Checkpoint, built once per distinct request."""
    made: dict = {}

    def get(family: str, **overrides):
        key = (family, json.dumps(overrides, sort_keys=True))
        if key not in made:
            made[key] = save_checkpoint(tmp_path_factory.mktemp(family), family, **overrides)
        return made[key]

    return get


@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory):
    """A tiny Llama with a trained tokenizer (vocab 300) and its HF tokenizer; special ids from the tokenizer."""
    tok = train_tokenizer(300)
    d = tmp_path_factory.mktemp("llama_text")
    ckpt = save_checkpoint(d, "llama3", seed=3, vocab_size=300, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tok.save_pretrained(d)
    return ckpt, transformers.AutoTokenizer.from_pretrained(d)
