"""The safetensors data buffer is checked as the `safetensors` library checks it (no holes, no trailing
bytes, no overlap), and a duplicate JSON key in a header is an error. Each case is also given to the
library itself, so where it has an opinion kiln is shown to agree with it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors import SafetensorError
from safetensors.numpy import load as library_load

from kiln.io.errors import CheckpointError
from kiln.io.safetensors_file import load_safetensors

F = np.arange(4, dtype=np.float32).tobytes()  # 16 bytes of data


def _file(tmp_path, header: str, data: bytes) -> tuple:
    raw = header.encode()
    blob = struct.pack("<Q", len(raw)) + raw + data
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    return path, blob


def _library_accepts(blob: bytes) -> bool:
    try:
        library_load(blob)
        return True
    except SafetensorError:
        return False


def _e(name, dtype, shape, begin, end):
    return f'"{name}":{{"dtype":"{dtype}","shape":{json.dumps(shape)},"data_offsets":[{begin},{end}]}}'


REJECTED = [
    ("trailing bytes", "{" + _e("a", "F32", [4], 0, 16) + "}", F + b"\0" * 8,
     r"8 trailing bytes after the last tensor: the tensors cover \[0, 16\] of a 24-byte data buffer"),
    ("data but no tensors", "{}", b"ab", r"2 trailing bytes"),
    ("hole at the start", "{" + _e("a", "F32", [3], 4, 16) + "}", F,
     r"hole of 4 bytes \[0, 4\] in the data buffer at the start of the data buffer before tensor 'a'"),
    ("hole between tensors", "{" + _e("a", "F32", [1], 0, 4) + "," + _e("b", "F32", [2], 8, 16) + "}", F,
     r"hole of 4 bytes \[4, 8\] in the data buffer after tensor 'a' before tensor 'b' \[8, 16\]"),
    ("empty tensor past the end", "{" + _e("b", "F32", [4], 0, 16) + "," + _e("z", "F32", [0], 20, 20) + "}", F,
     r"tensor 'z': data_offsets \[20, 20\] run past the end"),
    ("empty tensor inside another", "{" + _e("b", "F32", [4], 0, 16) + "," + _e("z", "F32", [0], 4, 4) + "}", F,
     r"tensors 'b' \[0, 16\] and 'z' \[4, 4\] overlap"),
    ("overlap", "{" + _e("a", "F32", [3], 0, 12) + "," + _e("b", "F32", [3], 4, 16) + "}", F, r"overlap"),
    ("duplicate key inside an entry", '{"a":{"dtype":"F32","dtype":"I32","shape":[4],"data_offsets":[0,16]}}', F,
     r"header: the key 'dtype' appears twice"),
    ("duplicate __metadata__", '{"__metadata__":{"k":"1"},"__metadata__":{"k":"2"},' + _e("a", "F32", [4], 0, 16) + "}",
     F, r"header: the key '__metadata__' appears twice"),
]


@pytest.mark.parametrize("case, header, data, pattern", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_like_the_library(tmp_path, case, header, data, pattern):
    path, blob = _file(tmp_path, header, data)
    assert not _library_accepts(blob), f"the library accepts {case!r}: the test's premise is wrong"
    with pytest.raises(CheckpointError, match=pattern):
        load_safetensors(path)


def test_duplicate_tensor_name_is_an_error_though_the_library_lets_the_last_win(tmp_path):
    # The same 16 bytes under one name, once as F32 and once as I32: the library silently keeps the
    # last entry (reinterpreting the bytes); kiln refuses the ambiguity.
    header = "{" + _e("a", "F32", [4], 0, 16) + "," + _e("a", "I32", [4], 0, 16) + "}"
    path, blob = _file(tmp_path, header, F)
    assert library_load(blob)["a"].dtype == np.int32
    with pytest.raises(CheckpointError, match=r"x\.safetensors: header: the key 'a' appears twice"):
        load_safetensors(path)


ACCEPTED = [
    ("plain", "{" + _e("a", "F32", [4], 0, 16) + "}", F),
    ("header padded with spaces", "{" + _e("a", "F32", [4], 0, 16) + "}    ", F),
    ("empty tensor at the end", "{" + _e("a", "F32", [4], 0, 16) + "," + _e("z", "F32", [0], 16, 16) + "}", F),
    ("empty tensor between", "{" + _e("a", "F32", [1], 0, 4) + "," + _e("z", "I32", [0, 3], 4, 4) + ","
     + _e("b", "F32", [3], 4, 16) + "}", F),
    ("only an empty tensor", "{" + _e("z", "F32", [0], 0, 0) + "}", b""),
    ("no tensors", "{}", b""),
    ("unsorted entries", "{" + _e("b", "F32", [3], 4, 16) + "," + _e("a", "F32", [1], 0, 4) + "}", F),
]


@pytest.mark.parametrize("case, header, data", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_like_the_library_with_the_same_values(tmp_path, case, header, data):
    path, blob = _file(tmp_path, header, data)
    ref = library_load(blob)
    ours = load_safetensors(path)
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
        np.testing.assert_array_equal(ours[k], ref[k])
