"""The validated config accessors (config_int/float/bool/str, check_divisible) family parsers call:
type and range are checked, and every error names the field and the file."""

from __future__ import annotations

import json

import pytest

from kiln.io.config import check_divisible, config_bool, config_float, config_int, config_str, read_config
from kiln.io.errors import ConfigError


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "n_kv": 3, "zero": 0, "neg": -2,
        "frac": 32.5, "whole_float": 32.0, "string": "32", "flag": True, "eps": 1e-6, "huge": 10 ** 400,
        "act": "silu", "nul": None,
    }))
    return read_config(tmp_path)


def test_config_int(cfg):
    assert config_int(cfg, "hidden_size") == 64
    assert config_int(cfg, "missing", "hidden_size") == 64  # aliases, first present wins
    assert config_int(cfg, "zero", min=0) == 0 and config_int(cfg, "neg", min=None) == -2
    assert config_int(cfg, "nul", default=7) == 7 and config_int(cfg, "absent", default=None) is None
    for key, found in [("zero", "0"), ("neg", "-2")]:
        with pytest.raises(ConfigError, match=rf"config\.json: field '{key}' must be an integer >= 1, found {found}$"):
            config_int(cfg, key)
    with pytest.raises(ConfigError, match=r"field 'hidden_size' must be an integer in \[1, 8\], found 64"):
        config_int(cfg, "hidden_size", max=8)
    for key, found in [("frac", r"32\.5 \(number\)"), ("whole_float", r"32\.0 \(number\)"), ("string", r"'32' \(string\)"),
                       ("flag", r"True \(boolean\)")]:
        with pytest.raises(ConfigError, match=rf"config\.json: field '{key}' must be an integer, found {found}"):
            config_int(cfg, key)
    with pytest.raises(ConfigError, match=r"required field 'absent' / 'nul' not found \(model_type='llama'\)"):
        config_int(cfg, "absent", "nul")


def test_config_float(cfg):
    assert config_float(cfg, "eps", min=0, min_exclusive=True) == 1e-6
    assert config_float(cfg, "hidden_size") == 64.0 and isinstance(config_float(cfg, "hidden_size"), float)
    with pytest.raises(ConfigError, match=r"field 'zero' must be a number > 0, found 0\.0"):
        config_float(cfg, "zero", min=0, min_exclusive=True)
    with pytest.raises(ConfigError, match=r"field 'frac' must be a number in \(0, 1\], found 32\.5"):
        config_float(cfg, "frac", min=0, max=1, min_exclusive=True)
    with pytest.raises(ConfigError, match=r"field 'neg' must be a number >= 0, found -2\.0"):
        config_float(cfg, "neg", min=0)
    with pytest.raises(ConfigError, match=r"field 'string' must be a number, found '32' \(string\)"):
        config_float(cfg, "string")
    with pytest.raises(ConfigError, match=r"field 'flag' must be a number"):
        config_float(cfg, "flag")
    with pytest.raises(ConfigError, match=r"field 'huge' must be a finite number, found an integer of 401 digits"):
        config_float(cfg, "huge")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_config_float_rejects_json_nonfinite_literals(tmp_path, text):
    (tmp_path / "config.json").write_text('{"rope_theta": %s}' % text)
    with pytest.raises(ConfigError, match=r"field 'rope_theta' must be a finite number"):
        config_float(read_config(tmp_path), "rope_theta")


def test_config_bool_and_str(cfg):
    assert config_bool(cfg, "flag") is True and config_bool(cfg, "absent", default=False) is False
    with pytest.raises(ConfigError, match=r"field 'zero' must be true or false, found 0 \(integer\)"):
        config_bool(cfg, "zero")
    assert config_str(cfg, "act", choices={"silu", "gelu"}) == "silu"
    with pytest.raises(ConfigError, match=r"field 'act' must be one of \['gelu', 'relu'\], found 'silu'"):
        config_str(cfg, "act", choices=("relu", "gelu"))
    with pytest.raises(ConfigError, match=r"field 'hidden_size' must be a string, found 64 \(integer\)"):
        config_str(cfg, "hidden_size")


def test_check_divisible(cfg):
    check_divisible(cfg, "hidden_size", 64, "num_attention_heads", 4)
    with pytest.raises(ConfigError, match=r"config\.json: num_attention_heads \(4\) must be a multiple of n_kv \(3\)"):
        check_divisible(cfg, "num_attention_heads", 4, "n_kv", 3)
    with pytest.raises(ConfigError, match=r"hidden_size \(64\) must be a multiple of heads \(0\)"):
        check_divisible(cfg, "hidden_size", 64, "heads", 0)


def test_plain_dict_names_a_generic_source():
    with pytest.raises(ConfigError, match=r"^config: field 'a' must be an integer"):
        config_int({"a": "x"}, "a")
