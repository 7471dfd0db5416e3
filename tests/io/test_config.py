"""kiln.io.config: reading config.json as transformers writes it, and its errors."""

from __future__ import annotations

import json

import pytest

from kiln.io.config import config_get, read_config
from kiln.io.errors import CheckpointError, ConfigError


def test_reads_transformers_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    cfg.save_pretrained(tmp_path)
    ours = read_config(tmp_path)
    assert isinstance(ours, dict) and ours.path == str(tmp_path / "config.json")
    assert ours == json.loads((tmp_path / "config.json").read_text())
    assert ours["model_type"] == "llama" and ours["hidden_size"] == 64
    assert read_config(tmp_path / "config.json") == ours  # the file itself works too
    assert config_get(ours, "n_kv_heads", "num_key_value_heads") == 2
    assert config_get(ours, "head_dim", default=None) in (None, 16)


def test_config_get_aliases_and_nulls(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "n_embd": 8, "num_key_value_heads": None}))
    cfg = read_config(tmp_path)
    assert config_get(cfg, "hidden_size", "n_embd", "d_model") == 8
    assert config_get(cfg, "num_key_value_heads", default=4) == 4  # null means "use the default"
    with pytest.raises(ConfigError, match=r"config\.json: required field 'num_key_value_heads' / 'n_kv_heads' not found \(model_type='x'\)"):
        config_get(cfg, "num_key_value_heads", "n_kv_heads")
    with pytest.raises(ConfigError, match="required field 'a' not found"):
        config_get({"model_type": "plain dict"}, "a")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: config file not found"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(ConfigError, match=r"config\.json: invalid JSON at line 2 column 7"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object at top level, found list"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        read_config(tmp_path)
