"""StaticKVCache slot bookkeeping and GenerationConfig resolution (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kiln.runtime.generation import GenerationConfig, position_ids_from_mask
from kiln.runtime.kv_cache import StaticKVCache


def test_cache_counts_slots_and_names_the_problem():
    cache = StaticKVCache(batch=2, max_len=4)
    with pytest.raises(ValueError, match="does not fit a cache of max_len 4"):
        cache.start(5)
    cache.start(3)
    with pytest.raises(ValueError, match="already filled"):
        cache.start(1)
    assert cache.next_slot() == 3 and cache.length == 4
    with pytest.raises(ValueError, match="full"):
        cache.next_slot()


def test_position_ids_follow_hf_generation():
    torch = pytest.importorskip("torch")
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]])
    t = torch.from_numpy(mask)
    ref = (t.long().cumsum(-1) - 1).masked_fill(t == 0, 0).numpy()  # GenerationMixin._prepare_position_ids_for_generation
    np.testing.assert_array_equal(position_ids_from_mask(mask), ref)


def test_generation_config_sources(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [3, 4], "pad_token_id": 0}))
    cfg = GenerationConfig.from_dir(tmp_path, json.loads((tmp_path / "config.json").read_text()))
    assert cfg.eos_token_ids == [3, 4] and cfg.pad_token_id == 0
    assert cfg.resolved("top_k") == 50 and cfg.resolved("do_sample") is False  # HF's defaults
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "temperature": 0.6,
                                                                 "num_beams": 4}))
    with pytest.warns(UserWarning, match="num_beams"):
        cfg = GenerationConfig.from_dir(tmp_path)
    assert cfg.eos_token_ids == [2] and cfg.resolved("temperature") == 0.6
    assert cfg.merged(temperature=0.9, top_p=None).temperature == 0.9
    with pytest.raises(TypeError, match="unknown generation setting"):
        cfg.merged(typical_p=0.5)
