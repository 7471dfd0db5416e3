"""Shared helpers of the hardening tests: a wall-clock limit (a hang is a failure, not a stuck suite)
and a tiny random Llama checkpoint written by HF transformers."""

from __future__ import annotations

import contextlib
import signal
import threading

import pytest


class Hang(Exception):
    """Raised by time_limit when the block runs too long (deliberately not a KilnError)."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "block"):
    """Raise Hang if the block runs longer than `seconds` (SIGALRM: interrupts a blocking open() too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"{what} did not finish within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(directory, config dict) of a 1-layer random Llama (GQA, untied head) saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    import json

    import torch

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    d = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(d)
    return d, json.loads((d / "config.json").read_text())
