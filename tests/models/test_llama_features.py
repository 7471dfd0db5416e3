"""Encoder features at placeholder tokens (kiln.nn.features) vs HF's `inputs_embeds` path.

A vision-language model hands the decoder rows that replace the token embeddings at its
image tokens. Here the rows are random, the decoder is a tiny random Llama, and HF gets the
merged embeddings as `inputs_embeds`: forward logits and greedy generation must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.errors import InputError
from kiln.load import load

transformers = pytest.importorskip("transformers")


def _features(hf, ids, rng):
    mask = np.zeros(ids.shape, bool)
    mask[:, 2:6] = True
    mask[1, 8] = True
    embeds = rng.standard_normal((*ids.shape, hf.config.hidden_size)).astype(np.float32)
    with torch.no_grad():
        merged = hf.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    merged[mask] = embeds[mask]
    return embeds, mask, merged


def test_features_replace_token_embeddings_like_hf_inputs_embeds(checkpoint):
    ck = checkpoint("llama3")
    model = load(ck.path)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, ck.vocab_size, size=(2, 11))
    embeds, mask, merged = _features(ck.hf, ids, rng)
    with torch.no_grad():
        ref = ck.hf(inputs_embeds=torch.from_numpy(merged)).logits.numpy()
    got = model(ids, features=(embeds, mask))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(got - model(ids)).max() > 1e-2   # the features changed the logits

    with torch.no_grad():
        seq = ck.hf.generate(inputs_embeds=torch.from_numpy(merged), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=12).numpy()
    out = model.generate(ids, max_new_tokens=12, features=(embeds, mask))
    np.testing.assert_array_equal(out[:, ids.shape[1]:], seq[:, -12:])


def test_features_of_the_wrong_shape_are_named(checkpoint):
    ck = checkpoint("llama3")
    model = load(ck.path)
    ids = np.full((1, 5), 4)
    with pytest.raises(InputError, match="inputs_embeds has shape"):
        model(ids, features=(np.zeros((1, 4, 32), np.float32), np.zeros((1, 5), bool)))
    with pytest.raises(InputError, match="embeds_mask must be a bool array"):
        model(ids, features=(np.zeros((1, 5, 32), np.float32), np.zeros((1, 5), np.int64)))
