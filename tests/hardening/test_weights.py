"""Weights are never cast across dtype classes and never load with NaN/Inf without an explicit opt-out."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.io.errors import CheckpointError
from kiln.io.weight_map import WeightMap


def _wm(**tensors):
    return WeightMap(tensors, "ckpt/model.safetensors")


@pytest.mark.parametrize("stored", [np.int32, np.int64, np.uint8, np.bool_])
@pytest.mark.parametrize("target", ["float32", "float16", "bfloat16"])
def test_integer_or_bool_weights_for_a_float_layer_fail_naming_the_tensor(stored, target):
    wm = _wm(**{"layers.0.w": np.ones((2, 3), stored)})
    with pytest.raises(CheckpointError, match=r"ckpt/model\.safetensors: tensor 'layers\.0\.w' is stored as "
                                              rf"{np.dtype(stored)} \((integer|bool)\), expected a float tensor"):
        wm.take("layers.0.w", shape=(2, 3), dtype=target)
    with pytest.raises(CheckpointError, match=r"tensor 'layers\.0\.w' is stored as"):
        wm.take_transposed("layers.0.w", dtype=target)
    with pytest.raises(CheckpointError, match=r"tensor 'layers\.0\.w' is stored as"):
        wm.take_concat(["layers.0.w", "layers.0.w"], dtype=target)


def test_float_weights_for_an_integer_slot_fail_and_integer_narrowing_is_range_checked():
    wm = _wm(f=np.ones(3, np.float32), big=np.array([0, 300], np.int64), small=np.array([0, 100], np.int64))
    with pytest.raises(CheckpointError, match=r"tensor 'f' is stored as float32 \(float\), expected an integer"):
        wm.take("f", dtype=np.int64)
    with pytest.raises(CheckpointError, match=r"tensor 'big' \(int64\) holds values in \[0, 300\], outside the range of int8"):
        wm.take("big", dtype=np.int8)
    assert wm.take("small", dtype=np.int8).dtype == np.int8


def test_float_conversions_within_the_class_still_work():
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    wm = _wm(a=a, h=a.astype(np.float16), b=a.astype(ml_dtypes.bfloat16), e=a.astype(ml_dtypes.float8_e4m3fn))
    np.testing.assert_array_equal(wm.take("a", dtype="bfloat16"), a.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(wm.take("h", dtype=np.float32), a.astype(np.float16).astype(np.float32))
    assert wm.take("b", dtype=np.float32).dtype == np.float32
    assert wm.take("e", dtype=np.float32).dtype == np.float32
    ints = _wm(i=np.arange(4, dtype=np.int32))
    assert ints.take("i").dtype == np.int32  # without dtype= the stored dtype is kept, not checked


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weight_fails_naming_tensor_count_and_index(dtype, bad):
    a = np.zeros((3, 5), np.float32)
    a[2, 1] = bad
    a[2, 4] = bad
    wm = _wm(**{"model.norm.weight": a.astype(dtype)})
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' \(.*, shape \(3, 5\)\) holds 2 "
                                              r"non-finite values \(NaN/Inf\), first at index \(2, 1\)"):
        wm.take("model.norm.weight")
    with pytest.raises(CheckpointError, match="non-finite"):
        wm.take("model.norm.weight", dtype=np.float32)
    with pytest.raises(CheckpointError, match="non-finite"):
        wm.take_concat(["model.norm.weight", "model.norm.weight"])


def test_nonfinite_in_a_large_tensor_past_the_first_chunk():
    a = np.zeros((1 << 23) + 7, np.float32)
    a[-3] = np.nan
    with pytest.raises(CheckpointError, match=rf"holds 1 non-finite values .* first at index \({a.size - 3},\)"):
        _wm(w=a).take("w")


def test_overflow_in_conversion_is_reported_as_such():
    wm = _wm(w=np.array([1.0, 1e5], np.float32))
    with pytest.raises(CheckpointError, match=r"after conversion from float32 to float16 \(the stored values overflow it\)"):
        wm.take("w", dtype=np.float16)


def test_nonfinite_policy_warn_allow_and_environment(monkeypatch):
    a = np.array([1.0, np.nan], np.float32)
    with pytest.warns(UserWarning, match=r"tensor 'w' .* holds 1 non-finite"):
        out = WeightMap({"w": a}, "src", nonfinite="warn").take("w")
    assert np.isnan(out[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(WeightMap({"w": a}, "src", nonfinite="allow").take("w")[1])
        # the policy carries over to a prefix-stripped view
        assert np.isnan(WeightMap({"m.w": a}, "src", nonfinite="allow").strip_prefix("m.").take("w")[1])
    monkeypatch.setenv("KILN_NONFINITE_WEIGHTS", "allow")
    assert np.isnan(WeightMap({"w": a}, "src").take("w")[1])
    monkeypatch.setenv("KILN_NONFINITE_WEIGHTS", "maybe")
    with pytest.raises(CheckpointError, match=r"\$KILN_NONFINITE_WEIGHTS must be one of \['error', 'warn', 'allow'\], found 'maybe'"):
        WeightMap({"w": a}, "src")
    with pytest.raises(KilnError, match=r"nonfinite must be one of"):
        WeightMap({"w": a}, "src", nonfinite="no")


def _copy_with(tiny_llama, tmp_path, edit):
    """A copy of the tiny checkpoint whose model.safetensors tensors were passed through `edit`."""
    import shutil

    from safetensors.numpy import load_file, save_file

    d, _ = tiny_llama
    work = tmp_path / "ckpt"
    shutil.copytree(d, work)
    tensors = load_file(str(work / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(work / "model.safetensors"), metadata={"format": "pt"})
    return work


def test_kiln_load_refuses_integer_weights_naming_the_tensor(tiny_llama, tmp_path):
    import kiln

    def to_int(t):
        t["model.layers.0.mlp.up_proj.weight"] = (t["model.layers.0.mlp.up_proj.weight"] * 100).astype(np.int32)

    d = _copy_with(tiny_llama, tmp_path, to_int)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.mlp\.up_proj\.weight' is stored as int32 "
                                              r"\(integer\), expected a float tensor"):
        kiln.load(d)


def test_kiln_load_refuses_nonfinite_weights_unless_allowed(tiny_llama, tmp_path, monkeypatch):
    import kiln

    def poison(t):
        t["model.norm.weight"] = t["model.norm.weight"].copy()
        t["model.norm.weight"][3] = np.inf

    d = _copy_with(tiny_llama, tmp_path, poison)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' \(float32, shape \(16,\)\) holds 1 "
                                              r"non-finite values \(NaN/Inf\), first at index \(3,\)"):
        kiln.load(d)
    monkeypatch.setenv("KILN_NONFINITE_WEIGHTS", "allow")
    kiln.load(d)  # the documented opt-out


def test_errors_name_the_checkpoint_key_through_prefix_stripped_views():
    wm = _wm(**{"model.norm.weight": np.array([np.nan], np.float32), "model.ids": np.ones(2, np.int64)})
    view = wm.strip_prefix("model.")
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' \(float32"):
        view.take("norm.weight")
    with pytest.raises(CheckpointError, match=r"tensor 'model\.ids' is stored as int64"):
        view.strip_prefix("nothing.").take("ids", dtype=np.float32)
