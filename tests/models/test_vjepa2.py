"""V-JEPA 2 vs HF transformers: encoder, predictor with context/target masks, video classifier logits,
the original (Meta) key layout, and the errors for bad checkpoints and clips. Tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import CheckpointError, InputError
from vjepa2_checkpoints import clip, edit_hf, make_model, save, save_original

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoder_ckpt(tmp_path_factory):
    model = make_model()
    return model, save(model, tmp_path_factory.mktemp("vjepa2"))


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    model = make_model(classifier=True, seed=1, num_labels=7)
    return model, save(model, tmp_path_factory.mktemp("vjepa2_cls"))


@pytest.fixture(scope="module")
def encoder(encoder_ckpt):
    return kiln.load(encoder_ckpt[1])


def hf_forward(model, x, context=None, target=None):
    kw = {} if context is None else dict(context_mask=[torch.from_numpy(context)],
                                          target_mask=[torch.from_numpy(target)])
    with torch.no_grad():
        return model(torch.from_numpy(x), skip_predictor=context is None, **kw)


# (batch, frames, height, width): two clip lengths and resolutions, one unlike the config's 16x16 crop
SHAPES = [(1, 4, 16, 16), (2, 6, 12, 20)]


@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_matches_hf(encoder_ckpt, encoder, shape):
    x = clip(*shape)
    ref = hf_forward(encoder_ckpt[0], x).last_hidden_state.numpy()
    out = encoder(pixel_values_videos=x)
    assert out["last_hidden_state"].shape == ref.shape
    np.testing.assert_allclose(out["last_hidden_state"], ref, atol=1e-4)


def test_rope3d_matches_hf_rotation():
    """Rope3D against HF's apply_rotary_embeddings, for a head with unrotated dims after the three parts."""
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2RopeAttention

    from kiln.ir import Graph
    from kiln.nn import Rope3D
    from kiln.runtime.compiler import compile as compile_graph

    head_dim, count, grid = 16, 32, (4, 4)   # part 4, 12 rotated dims, 4 passed through
    cfg = transformers.VJEPA2Config(hidden_size=32, num_attention_heads=2, crop_size=12, patch_size=3)
    attn = VJEPA2RopeAttention(cfg, 32, 2)
    ids = np.array([[5, 0, 23, 13, 7], [1, 2, 3, 22, 12]])
    q = np.random.RandomState(0).randn(2, 2, 5, head_dim).astype(np.float32)
    ref = attn.apply_rotary_embeddings(torch.from_numpy(q), attn.get_position_ids(torch.zeros(2, 5, 32),
                                                                                  torch.from_numpy(ids))).numpy()
    rope = Rope3D(head_dim, grid)
    g = Graph("rope3d")
    x, tok = g.input("x", q.shape), g.input("ids", ids.shape, "int64")
    g.output("y", rope(g, x, rope.tables(g, count, tok)))
    out = compile_graph(g).run(x=q, ids=ids)["y"]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.abs(out - q).max() > 0.1, "the rotation must change q"
    np.testing.assert_array_equal(out[..., 12:], q[..., 12:])


@pytest.mark.parametrize("shape,context,target", [
    ((1, 4, 16, 16), [[0, 3, 5, 9, 20, 31]], [[1, 2, 17, 30]]),
    # batch 2, rows with their own ids, unsorted, context and target overlapping
    ((2, 6, 12, 20), [[0, 44, 7, 30, 12], [3, 4, 5, 6, 40]], [[44, 1, 2], [29, 0, 5]]),
])
def test_predictor_matches_hf(encoder_ckpt, encoder, shape, context, target):
    x, ctx, tgt = clip(*shape, seed=2), np.array(context), np.array(target)
    ref = hf_forward(encoder_ckpt[0], x, ctx, tgt)
    out = encoder(pixel_values_videos=x, context_mask=[ctx], target_mask=[tgt])
    np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["masked_hidden_state"], ref.masked_hidden_state.numpy(), atol=1e-4)
    pred = out["predictor_output"]
    np.testing.assert_allclose(pred["last_hidden_state"], ref.predictor_output.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(pred["target_hidden_state"], ref.predictor_output.target_hidden_state.numpy(),
                               atol=1e-4)
    moved = encoder(pixel_values_videos=x, context_mask=ctx, target_mask=(tgt + 1) % 8)
    assert np.abs(moved["predictor_output"]["last_hidden_state"] - pred["last_hidden_state"]).max() > 1e-2


@pytest.mark.parametrize("shape", SHAPES)
def test_classifier_logits_match_hf(classifier_ckpt, shape):
    model, path = classifier_ckpt
    x = clip(*shape, seed=3)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).logits.numpy()
    out = kiln.load(path)(pixel_values_videos=x)
    assert out["logits"].shape == (shape[0], 7)
    np.testing.assert_allclose(out["logits"], ref, atol=1e-4)


def test_original_layout_gives_identical_outputs(encoder_ckpt, encoder, classifier_ckpt, tmp_path):
    x, ctx, tgt = clip(1, 4, 16, 16, seed=4), np.array([[1, 8, 9, 25]]), np.array([[0, 2, 31]])
    orig = kiln.load(save_original(encoder_ckpt[1], tmp_path / "orig"))
    assert orig.layout == "original" and encoder.layout == "hf"
    a, b = encoder(x, context_mask=ctx, target_mask=tgt), orig(x, context_mask=ctx, target_mask=tgt)
    np.testing.assert_array_equal(a["last_hidden_state"], b["last_hidden_state"])
    np.testing.assert_array_equal(a["predictor_output"]["last_hidden_state"],
                                  b["predictor_output"]["last_hidden_state"])
    cls_hf = kiln.load(classifier_ckpt[1])
    cls_orig = kiln.load(save_original(classifier_ckpt[1], tmp_path / "orig_cls"))
    assert cls_orig.layout == "original" and cls_orig.is_classifier
    np.testing.assert_array_equal(cls_hf(x)["logits"], cls_orig(x)["logits"])


def test_wrong_shape_names_key_and_layout(encoder_ckpt, classifier_ckpt, tmp_path):
    def shrink(key):
        def edit(t):
            t[key] = np.ascontiguousarray(t[key][:-1])
        return edit

    bad = edit_hf(encoder_ckpt[1], tmp_path / "hf", shrink("encoder.layer.1.attention.key.weight"))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.key\.weight.*hf layout"):
        kiln.load(bad)
    bad = save_original(encoder_ckpt[1], tmp_path / "orig", shrink("blocks.0.attn.qkv.weight"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight.*original layout"):
        kiln.load(bad)
    bad = save_original(classifier_ckpt[1], tmp_path / "orig_cls", shrink("pooler.cross_attention_block.xattn.kv.bias"))
    with pytest.raises(CheckpointError, match=r"xattn\.kv\.bias.*original layout"):
        kiln.load(bad)


def test_encoder_only_original_checkpoint(encoder_ckpt, encoder, tmp_path):
    """The original releases keep the encoder and the predictor apart: an encoder alone loads."""
    def drop_predictor(t):
        for k in [k for k in t if k.startswith(("predictor_", "mask_tokens."))]:
            del t[k]

    alone = kiln.load(save_original(encoder_ckpt[1], tmp_path / "enc", drop_predictor))
    x = clip(1, 4, 16, 16, seed=5)
    np.testing.assert_array_equal(alone(x)["last_hidden_state"], encoder(x)["last_hidden_state"])
    with pytest.raises(InputError, match="no predictor"):
        alone(x, context_mask=np.array([[0]]), target_mask=np.array([[1]]))


def test_hf_mask_tokens_shape_is_checked(encoder_ckpt, tmp_path):
    bad = edit_hf(encoder_ckpt[1], tmp_path / "tokens", lambda t: t.update(
        {"predictor.embeddings.mask_tokens": t["predictor.embeddings.mask_tokens"][:, 0]}))
    with pytest.raises(CheckpointError, match=r"predictor\.embeddings\.mask_tokens.*\(3, 1, 1, 32\).*hf layout"):
        kiln.load(bad)


def test_not_a_vjepa2_checkpoint(encoder_ckpt, tmp_path):
    bad = edit_hf(encoder_ckpt[1], tmp_path / "renamed",
                  lambda t: t.update(stem=t.pop("encoder.embeddings.patch_embeddings.proj.weight")))
    with pytest.raises(CheckpointError, match="not a V-JEPA 2 checkpoint.*patch_embed"):
        kiln.load(bad)


@pytest.mark.parametrize("field,value,match", [
    ("num_attention_heads", 5, "hidden_size"),
    ("patch_size", [4, 4], "one integer"),
    ("id2label", {"a": "x"}, "id2label"),
    ("hidden_act", "mish", "hidden_act"),
])
def test_bad_config_is_named(field, value, match):
    from kiln.errors import ConfigError
    from kiln.models.vjepa2 import VJEPA2Config
    from vjepa2_checkpoints import TINY

    with pytest.raises(ConfigError, match=match):
        VJEPA2Config.from_dict({**TINY, field: value})


@pytest.mark.parametrize("frames", [1, 3])
def test_too_few_or_odd_frames_raise(encoder, frames):
    with pytest.raises(InputError, match=f"{frames} frames.*tubelets of 2 frames"):
        encoder(clip(1, frames, 16, 16))


def test_bad_inputs_raise(encoder):
    x = clip(1, 4, 16, 16)
    with pytest.raises(InputError, match="float32"):
        encoder(x.astype(np.float64))
    with pytest.raises(InputError, match=r"\[batch, frames, channels, height, width\]"):
        encoder(x[0])
    with pytest.raises(InputError, match="patches"):
        encoder(clip(1, 4, 16, 18))
    with pytest.raises(InputError, match="channels"):
        encoder(x[:, :, :2])
    with pytest.raises(InputError, match="both context_mask and target_mask"):
        encoder(x, context_mask=np.array([[0]]))
    with pytest.raises(InputError, match=r"target_mask ids must be in \[0, 32\)"):
        encoder(x, context_mask=np.array([[0]]), target_mask=np.array([[32]]))
    with pytest.raises(InputError, match="integer token ids"):
        encoder(x, context_mask=np.array([[0.0]]), target_mask=np.array([[1]]))
    with pytest.raises(InputError, match="one mask"):
        encoder(x, context_mask=[np.array([[0]])] * 2, target_mask=np.array([[1]]))
