"""Every loader opens only regular files: a named pipe, a directory or a socket where a checkpoint
file belongs is a KilnError naming it, never a hang; broken JSON names the file."""

from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest

from hardening_limits import time_limit
from kiln.errors import CheckpointError, ConfigError, GraphError, KilnError, TokenizerError
from kiln.files import is_regular_file, open_regular, read_json_file, read_json_if_present, read_text_file
from kiln.io.config import read_config
from kiln.io.safetensors_file import load_checkpoint_dir, load_safetensors, read_safetensors_header, save_safetensors
from kiln.io.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


def _fifo(path):
    os.mkfifo(path)
    return path


def test_open_regular_refuses_special_files_without_blocking(tmp_path):
    pipe = _fifo(tmp_path / "pipe")
    with time_limit(5, "open of a FIFO"):
        with pytest.raises(CheckpointError, match=r"pipe: expected a regular config file, found a named pipe \(FIFO\)"):
            open_regular(pipe, "config file")
        with pytest.raises(ConfigError, match=r"expected a regular JSON file, found a named pipe"):
            read_json_file(pipe)
        with pytest.raises(ConfigError, match="found a named pipe"):
            read_json_if_present(pipe)  # present but not a regular file: an error, not "absent"
    with pytest.raises(CheckpointError, match=r"expected a regular file, found a directory"):
        open_regular(tmp_path)
    with pytest.raises(CheckpointError, match=r"char: expected a regular file, found a character device"):
        os.symlink("/dev/null", tmp_path / "char")
        open_regular(tmp_path / "char")
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(CheckpointError, match=r"s\.sock: cannot open file"):
            open_regular(sock_path)
    with pytest.raises(CheckpointError, match=r"nope: file not found"):
        open_regular(tmp_path / "nope")
    assert not is_regular_file(pipe) and not is_regular_file(tmp_path) and not is_regular_file(tmp_path / "nope")


def test_helpers_read_regular_files_and_follow_symlinks(tmp_path):
    (tmp_path / "real.json").write_text('{"a": [1, 2]}')
    os.symlink(tmp_path / "real.json", tmp_path / "link.json")  # the HF cache links snapshots to blobs
    assert read_json_file(tmp_path / "link.json") == {"a": [1, 2]}
    assert read_text_file(tmp_path / "link.json") == '{"a": [1, 2]}'
    assert read_json_if_present(tmp_path / "absent.json") is None
    os.symlink(tmp_path / "gone", tmp_path / "dangling.json")
    with pytest.raises(ConfigError, match=r"dangling\.json: JSON file not found"):
        read_json_if_present(tmp_path / "dangling.json")


@pytest.mark.parametrize("text, pattern", [
    ('{"a": 1,', r"invalid JSON at line 1 column 9"),
    ("[1, 2]", r"expected a JSON object at top level, found list"),
    ("[" * 100_000, r"(JSON nested too deeply|invalid JSON)"),
    ('{"a": 1, "a": 2}', None),  # duplicates are allowed unless asked (HF's json.load semantics) ...
])
def test_json_errors_name_the_file(tmp_path, text, pattern):
    p = tmp_path / "x.json"
    p.write_text(text)
    if pattern is None:
        assert read_json_file(p) == {"a": 2}
        with pytest.raises(ConfigError, match=r"x\.json: the key 'a' appears twice"):  # ... and refused when asked
            read_json_file(p, unique_keys=True)
        return
    with pytest.raises(ConfigError, match=rf"x\.json: {pattern}"):
        read_json_file(p)
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigError, match=r"x\.json: JSON file is not valid UTF-8"):
        read_json_file(p)


def test_config_json_as_a_fifo_or_directory(tmp_path):
    _fifo(tmp_path / "config.json")
    with time_limit(5, "read_config"):
        with pytest.raises(ConfigError, match=r"config\.json: expected a regular config file, found a named pipe"):
            read_config(tmp_path)
    os.unlink(tmp_path / "config.json")
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match=r"config\.json: expected a regular config file, found a directory"):
        read_config(tmp_path)  # the directory holds a "config.json" that is itself a directory


def test_safetensors_as_a_fifo(tmp_path):
    _fifo(tmp_path / "model.safetensors")
    with time_limit(5, "safetensors load"):
        for load in (read_safetensors_header, load_safetensors):
            with pytest.raises(CheckpointError, match=r"model\.safetensors: expected a regular safetensors file, found a named pipe"):
                load(tmp_path / "model.safetensors")
        with pytest.raises(CheckpointError, match="found a named pipe"):
            load_checkpoint_dir(tmp_path)


def test_sharded_index_and_shard_as_fifos(tmp_path):
    save_safetensors(tmp_path / "a.safetensors", {"x": np.ones(2, np.float32)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    _fifo(tmp_path / "b.safetensors")
    with time_limit(5, "sharded load"):
        with pytest.raises(CheckpointError, match=r"b\.safetensors: expected a regular safetensors file, found a named pipe"):
            load_checkpoint_dir(tmp_path)
        os.unlink(tmp_path / "model.safetensors.index.json")
        _fifo(tmp_path / "model.safetensors.index.json")
        with pytest.raises(CheckpointError, match=r"index\.json: expected a regular checkpoint index, found a named pipe"):
            load_checkpoint_dir(tmp_path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer as Backend, models, pre_tokenizers
    d = tmp_path_factory.mktemp("tok")
    tk = Backend(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    return d


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "chat_template.jinja", "chat_template.json", "additional_chat_templates/x.jinja"])
def test_tokenizer_side_files_as_fifos(tmp_path, tokenizer_dir, name):
    d = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, d)
    assert Tokenizer.from_dir(d).encode("a b") == [0, 1]
    target = d / name
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        target.unlink()
    _fifo(target)
    with time_limit(5, f"Tokenizer.from_dir with a FIFO {name}"):
        with pytest.raises(TokenizerError, match=rf"{name.split('/')[-1]}: expected a regular tokenizer file, found a named pipe"):
            Tokenizer.from_dir(d)


def test_tokenizer_bad_json_names_the_file(tmp_path, tokenizer_dir):
    d = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, d)
    (d / "tokenizer_config.json").write_text('{"unk_token": ')
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: invalid JSON at line 1 column 15"):
        Tokenizer.from_dir(d)


def test_graph_file_as_a_fifo(tmp_path):
    import kiln
    _fifo(tmp_path / "g.json")
    with time_limit(5, "load_graph"):
        with pytest.raises(GraphError, match=r"g\.json: expected a regular kiln graph file, found a named pipe"):
            kiln.load_graph(tmp_path / "g.json")


def test_every_loader_error_is_a_kiln_error(tmp_path):
    _fifo(tmp_path / "config.json")
    with pytest.raises(KilnError):
        read_config(tmp_path)
    with pytest.raises(ValueError):  # and still the standard type it refines
        read_config(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_kiln_load_with_a_fifo_in_the_checkpoint(tiny_llama, tmp_path, name):
    import kiln
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_llama[0], d)
    os.unlink(d / name)
    _fifo(d / name)
    with time_limit(30, "kiln.load"):
        with pytest.raises(KilnError, match=rf"{name}"):
            kiln.load(d)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=32)
    d = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(cfg).eval().save_pretrained(d)
    return d


@pytest.mark.parametrize("name, content", [("1_Pooling/config.json", None), ("1_Pooling/config.json", "{oops"),
                                           ("modules.json", "[1, 2]"), ("sentence_bert_config.json", "[]")])
def test_sentence_transformers_side_files(tiny_bert, tmp_path, name, content):
    import kiln
    d = tmp_path / "bert"
    shutil.copytree(tiny_bert, d)
    (d / name).parent.mkdir(exist_ok=True)
    if content is None:
        _fifo(d / name)
    else:
        (d / name).write_text(content)
    with time_limit(6, "kiln.load of a BERT checkpoint"):  # a hang costs these 6 s until bert.py is fixed
        with pytest.raises(KilnError, match=name.split("/")[-1]):
            kiln.load(d)
