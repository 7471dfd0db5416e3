"""StaticKVCache bookkeeping and GenerationConfig resolution (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kiln.runtime.generation import GenerationConfig, position_ids_from_mask
from kiln.runtime.kv_cache import StaticKVCache, present_name


def _presents(layers, shape, fill):
    return {present_name(i, kind): np.full(shape, fill + i, np.float32) for i in range(layers) for kind in ("key", "value")}


def test_prefill_then_decode_fills_slots_in_order():
    cache = StaticKVCache(2, batch=2, num_kv_heads=1, max_len=4, head_dim=3, dtype=np.float32)
    mask = np.array([[0, 1], [1, 1]])
    cache.write_prefill(_presents(2, (2, 1, 2, 3), 1.0), mask)
    assert cache.length == 2 and (cache.keys[1][:, :, :2] == 2.0).all() and (cache.keys[1][:, :, 2:] == 0).all()
    np.testing.assert_array_equal(cache.mask, [[0, 1, 0, 0], [1, 1, 0, 0]])
    cache.advance(_presents(2, (2, 1, 4, 3), 5.0), np.ones(2, np.int64))
    assert cache.length == 3 and (cache.values[0] == 5.0).all()
    np.testing.assert_array_equal(cache.mask[:, 2], [1, 1])


def test_cache_errors_name_the_problem():
    cache = StaticKVCache(1, batch=1, num_kv_heads=1, max_len=2, head_dim=2, dtype=np.float32)
    with pytest.raises(ValueError, match="does not fit a cache of max_len 2"):
        cache.write_prefill(_presents(1, (1, 1, 3, 2), 0.0), np.ones((1, 3), np.int64))
    with pytest.raises(ValueError, match=r"present.0.key has shape \(1, 1, 1, 3\)"):
        cache.write_prefill(_presents(1, (1, 1, 1, 3), 0.0), np.ones((1, 1), np.int64))
    cache.write_prefill(_presents(1, (1, 1, 2, 2), 0.0), np.ones((1, 2), np.int64))
    with pytest.raises(ValueError, match="full"):
        cache.advance(_presents(1, (1, 1, 2, 2), 0.0), np.ones(1, np.int64))


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
