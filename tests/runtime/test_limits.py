"""Input limits of decoder LMs: empty input, prompts past max_position_embeddings, generation past it."""

import numpy as np
import pytest

import kiln
from kiln.errors import InputError, KilnError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=32, max_position_embeddings=12)
    d = tmp_path_factory.mktemp("tiny")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(d)
    return kiln.load(d)


def test_empty_input_ids_is_a_named_error(tiny):
    with pytest.raises(InputError, match="input_ids is empty"):
        tiny(np.zeros((1, 0), np.int64))
    with pytest.raises(KilnError, match="input_ids is empty"):
        tiny.generate(np.zeros((1, 0), np.int64), max_new_tokens=2)


def test_a_prompt_longer_than_the_position_range_is_refused(tiny):
    with pytest.raises(InputError, match="13 tokens, more than the model's max_position_embeddings \\(12\\)"):
        tiny(np.ones((1, 13), np.int64))


def test_generation_past_the_position_range_warns_as_hf(tiny):
    with pytest.warns(UserWarning, match="past the model's max_position_embeddings \\(12\\)"):
        out = tiny.generate(np.ones((1, 10), np.int64), max_new_tokens=4, eos_token_id=[])
    assert out.shape == (1, 14)


def test_a_generation_config_that_is_not_a_json_object_file_names_it(tmp_path):
    import os

    from kiln.errors import ConfigError
    from kiln.runtime.generation import GenerationConfig

    (tmp_path / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="generation_config.json"):
        GenerationConfig.from_dir(tmp_path)
    os.remove(tmp_path / "generation_config.json")
    os.mkfifo(tmp_path / "generation_config.json")       # a named pipe: refused, never waited on
    with pytest.raises(ConfigError, match="generation_config.json"):
        GenerationConfig.from_dir(tmp_path)
