"""BERT family vs HF transformers: the real all-MiniLM-L6-v2 weights and tiny random configs."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from kiln.models.bert import demo_model_dir, load_bert

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "A man is eating food.",
    "Un homme mange de la nourriture, très bien ! 🍞",
    "Die Katze schläft auf dem Sofa.",
    "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills.",
    "数据科学很有趣",
]


@pytest.fixture(scope="module")
def minilm():
    return load_bert(demo_model_dir())


def test_minilm_last_hidden_state_matches_hf(minilm):
    hf = transformers.BertModel.from_pretrained(str(demo_model_dir())).eval()
    ids, mask = minilm.tokenizer.encode_batch(SENTENCES, padding_side="right")
    assert len(set(mask.sum(1))) > 1, "the batch must mix lengths so padding is exercised"
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    out = minilm(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
    valid = mask.astype(bool)
    np.testing.assert_allclose(out["last_hidden_state"][valid], ref.last_hidden_state.numpy()[valid], atol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], ref.pooler_output.numpy(), atol=1e-4)


def test_minilm_sentence_embeddings_match_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(demo_model_dir()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    emb = minilm.encode(SENTENCES, batch_size=3)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    cos = (emb * ref).sum(-1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() >= 0.99999


def test_minilm_tokenizer_matches_hf(minilm):
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(demo_model_dir()))
    for s in SENTENCES:
        assert minilm.tokenizer.encode(s) == hf_tok(s)["input_ids"]


@pytest.mark.parametrize("hidden,heads,layers,inter,types,act", [
    (32, 4, 2, 64, 2, "gelu"),
    (48, 3, 1, 96, 3, "gelu_new"),
])
def test_tiny_random_bert_matches_hf(tmp_path, hidden, heads, layers, inter, types, act):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=hidden, num_attention_heads=heads,
                                  num_hidden_layers=layers, intermediate_size=inter, type_vocab_size=types,
                                  max_position_embeddings=40, hidden_act=act, layer_norm_eps=1e-12)
    hf = transformers.BertModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    model = load_bert(tmp_path)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 120, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    tt = rng.integers(0, types, size=ids.shape)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(tt))
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    valid = mask.astype(bool)
    np.testing.assert_allclose(out["last_hidden_state"][valid], ref.last_hidden_state.numpy()[valid], atol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], ref.pooler_output.numpy(), atol=1e-4)


def test_bad_inputs_are_named(minilm):
    with pytest.raises(ValueError, match="attention_mask"):
        minilm(input_ids=np.ones((1, 4), np.int64), attention_mask=np.ones((1, 5), np.int64))
    with pytest.raises(ValueError, match="input_ids"):
        minilm(input_ids=np.full((1, 3), 10**6))
    with pytest.raises(TypeError, match="input_ids"):
        minilm(input_ids=np.ones((1, 3), np.float32))


def test_embed_cli_ranks_paraphrase_first():
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "embed", "--similarity", "How do I bake bread at home?",
         "The stock market fell sharply on Monday.", "A simple recipe for baking a loaf of bread in your kitchen."],
        capture_output=True, text=True, check=True, timeout=120).stdout
    ranked = [line for line in out.splitlines() if line.strip()[:2] in ("1.", "2.")]
    assert "recipe for baking" in ranked[0] and "stock market" in ranked[1], out
