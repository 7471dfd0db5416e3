"""kiln.io.weight_map: shape checks, aliases, fusion, use tracking; values checked against torch."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file as torch_save_file

from kiln.io.errors import CheckpointError
from kiln.io.safetensors_file import load_checkpoint_dir, load_safetensors
from kiln.io.weight_map import WeightMap

H, KV, FF = 16, 8, 24


@pytest.fixture()
def ckpt(tmp_path):
    """A small HF-layout checkpoint written by safetensors/torch, with torch tensors as the reference."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "model.embed_tokens.weight": torch.randn(10, H, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(H, H, generator=g),
        "model.layers.0.self_attn.k_proj.weight": torch.randn(KV, H, generator=g),
        "model.layers.0.self_attn.v_proj.weight": torch.randn(KV, H, generator=g),
        "model.layers.0.mlp.gate_proj.weight": torch.randn(FF, H, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(FF, H, generator=g),
        "model.norm.weight": torch.ones(H).to(torch.float16),
        "lm_head.weight": torch.randn(10, H, generator=g),
    }
    path = tmp_path / "model.safetensors"
    torch_save_file(sd, path)
    return WeightMap(load_safetensors(path), source=str(path)), sd


def test_take_checks_shape_and_keeps_dtype(ckpt):
    wm, sd = ckpt
    w = wm.take("model.layers.0.self_attn.k_proj.weight", shape=(KV, H))
    np.testing.assert_array_equal(w, sd["model.layers.0.self_attn.k_proj.weight"].numpy())
    e = wm.take("model.embed_tokens.weight", shape=(None, H))  # None: any vocab size
    assert e.dtype == ml_dtypes.bfloat16  # never cast silently
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(16,\), expected \(32,\)"):
        wm.take("model.norm.weight", shape=(32,))
    with pytest.raises(CheckpointError, match=r"has shape \(8, 16\), expected \(8, 16, \*\)"):
        wm.take("model.layers.0.self_attn.v_proj.weight", shape=(KV, H, None))


def test_take_dtype_is_explicit_conversion(ckpt):
    wm, sd = ckpt
    e = wm.take("model.embed_tokens.weight", dtype=np.float32)
    assert e.dtype == np.float32
    np.testing.assert_array_equal(e, sd["model.embed_tokens.weight"].float().numpy())
    n = wm.take("model.norm.weight", dtype="bfloat16")
    assert n.dtype == ml_dtypes.bfloat16
    with pytest.raises(CheckpointError, match="unknown target dtype 'float99'"):
        wm.take("lm_head.weight", dtype="float99")


def test_missing_key_lists_near_misses(ckpt):
    wm, _ = ckpt
    with pytest.raises(CheckpointError) as ei:
        wm.take("model.layers.0.self_attn.q_proj.weigth")
    msg = str(ei.value)
    assert "missing tensor 'model.layers.0.self_attn.q_proj.weigth'" in msg
    assert "similar keys: ['model.layers.0.self_attn.q_proj.weight'" in msg
    with pytest.raises(CheckpointError, match=r"no similar keys among 8 tensors"):
        wm.take("zzz")


def test_take_transposed_matches_torch(ckpt):
    wm, sd = ckpt
    w = wm.take_transposed("model.layers.0.mlp.gate_proj.weight", shape=(H, FF))
    assert w.flags.c_contiguous
    np.testing.assert_array_equal(w, sd["model.layers.0.mlp.gate_proj.weight"].T.contiguous().numpy())
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \(24, 16\), transposed \(16, 24\); expected \(24, 16\) after transposing"):
        wm.take_transposed("model.layers.0.mlp.up_proj.weight", shape=(FF, H))
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    t = WeightMap({"x": x}, "mem").take_transposed("x", shape=(4, 2, 3), axes=(2, 0, 1))
    np.testing.assert_array_equal(t, torch.from_numpy(x).permute(2, 0, 1).numpy())


def test_take_first_aliases(ckpt, tmp_path):
    wm, sd = ckpt
    hf, orig = "model.layers.0.self_attn.q_proj.weight", "layers.0.attention.wq.weight"
    np.testing.assert_array_equal(wm.take_first(orig, hf, shape=(H, H)), sd[hf].numpy())
    meta = WeightMap({orig: np.zeros((H, H), np.float32)}, "consolidated.safetensors")
    assert meta.take_first(hf, orig, shape=(H, H)).shape == (H, H)
    with pytest.raises(CheckpointError, match=r"none of the keys \['a\.wq', 'b\.q_proj'\] exist"):
        wm.take_first("a.wq", "b.q_proj")


def test_take_concat_fuses_qkv_like_torch(ckpt):
    wm, sd = ckpt
    keys = [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]
    qkv = wm.take_concat(keys, axis=0, shape=(H + 2 * KV, H))
    np.testing.assert_array_equal(qkv, torch.cat([sd[k] for k in keys], dim=0).numpy())
    assert all(k not in wm.unused() for k in keys)
    gu = wm.take_concat(["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"], axis=-1, shape=(FF, 2 * H))
    assert gu.shape == (FF, 2 * H)


def test_take_concat_errors(ckpt):
    wm, _ = ckpt
    with pytest.raises(CheckpointError, match=r"different dtypes \('lm_head\.weight': float32, 'model\.embed_tokens\.weight': bfloat16\); pass dtype="):
        wm.take_concat(["lm_head.weight", "model.embed_tokens.weight"])
    both = wm.take_concat(["lm_head.weight", "model.embed_tokens.weight"], dtype=np.float32, shape=(20, H))
    assert both.dtype == np.float32
    with pytest.raises(CheckpointError, match=r"shapes must agree on all other axes"):
        wm.take_concat(["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"], axis=1)
    with pytest.raises(CheckpointError, match=r"has shape \(32, 16\), expected \(40, 16\)"):
        wm.take_concat(["model.layers.0.self_attn.k_proj.weight"] * 4, shape=(40, H))


def test_unused_and_warning(ckpt):
    wm, _ = ckpt
    assert len(wm.unused()) == 8
    for k in wm.keys():
        if k != "lm_head.weight":
            wm.take(k)
    assert wm.unused() == ["lm_head.weight"]
    with pytest.warns(UserWarning, match=r"model\.safetensors: 1 checkpoint tensors were not used: lm_head\.weight"):
        assert wm.warn_unused() == ["lm_head.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wm.warn_unused(ignore=["lm_head.weight"]) == []
        wm.mark_used("lm_head.weight")
        assert wm.warn_unused() == []


def test_strip_prefix_shares_use_tracking(ckpt):
    wm, sd = ckpt
    inner = wm.strip_prefix("model.")
    assert inner.has("layers.0.mlp.up_proj.weight") and inner.has("lm_head.weight")
    assert not inner.has("model.norm.weight")
    np.testing.assert_array_equal(inner.take("norm.weight"), sd["model.norm.weight"].numpy())
    inner.take("lm_head.weight")
    assert "model.norm.weight" not in wm.unused() and "lm_head.weight" not in wm.unused()
    assert "norm.weight" not in inner.unused()
    clash = WeightMap({"model.a": np.zeros(1), "a": np.zeros(1)}, "x")
    with pytest.raises(CheckpointError, match=r"stripping prefix 'model\.' maps both 'model\.a' and 'a' to 'a'"):
        clash.strip_prefix("model.")


def test_real_hf_checkpoint_round_trip(tmp_path):
    """A tiny transformers Llama saved with save_pretrained: every weight reachable, equal to torch's."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    wm = WeightMap(load_checkpoint_dir(tmp_path), str(tmp_path))
    for name, t in model.state_dict().items():
        arr = wm.take(name, shape=tuple(t.shape))
        assert arr.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(arr.view(np.int16), t.view(torch.int16).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wm.warn_unused() == []
