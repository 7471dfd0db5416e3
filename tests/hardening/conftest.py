"""Fixtures of the hardening tests: a tiny random Llama checkpoint written by HF transformers.
(The wall-clock limit is in hardening_limits.py, a module name no other test directory uses.)"""

from __future__ import annotations

import pytest


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
