"""SAM 2 prompt encoder + two-way transformer + mask decoder against HF Sam2Model: points, boxes, both,
mask inputs, single and multimask, several prompts against one cached embedding, original key layout."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam2_checkpoints import make_checkpoint, pixels  # noqa: E402

import kiln  # noqa: E402
from kiln.models.sam2 import Sam2Model  # noqa: E402

POINTS = np.array([[[[30.0, 40.0], [90.5, 100.0]], [[64.0, 12.0], [5.0, 120.0]]]], np.float32)  # [1, 2, 2, 2]
LABELS = np.array([[[1, 0], [1, -10]]], np.int64)
BOXES = np.array([[[10.0, 20.0, 80.0, 110.0], [40.0, 5.0, 127.0, 60.0]]], np.float32)          # [1, 2, 4]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2_masks")
    hf = make_checkpoint(path, seed=5)
    model = kiln.load(path)
    return model, hf, model.embed_image(pixels(seed=7))


def hf_run(hf, embs, **kw):
    t = {k: torch.from_numpy(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    t.update({k: v for k, v in kw.items() if not isinstance(v, np.ndarray)})
    with torch.no_grad():
        out = hf(image_embeddings=[torch.from_numpy(e) for e in embs], **t)
    return out.pred_masks.numpy(), out.iou_scores.numpy(), out.object_score_logits.numpy()


def check(model, hf, embs, **kw):
    ours = model(image_embeddings=embs, **kw)
    masks, iou, obj = hf_run(hf, embs, **kw)
    assert ours["pred_masks"].shape == masks.shape and ours["iou_scores"].shape == iou.shape
    np.testing.assert_allclose(ours["pred_masks"], masks, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours["iou_scores"], iou, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours["object_score_logits"], obj, atol=1e-4, rtol=1e-4)
    return ours


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["points", "boxes", "both"])
def test_masks_match_hf(models, prompt, multimask):
    model, hf, embs = models
    kw = {}
    if prompt in ("points", "both"):
        kw.update(input_points=POINTS, input_labels=LABELS)
    if prompt in ("boxes", "both"):
        kw["input_boxes"] = BOXES
    out = check(model, hf, embs, multimask_output=multimask, **kw)
    assert out["pred_masks"].shape == (1, 2, 3 if multimask else 1, 32, 32)


def test_several_prompts_one_embedding(models):
    """Prompts of different shapes against one cached embedding; each matches HF."""
    model, hf, embs = models
    for i in range(3):
        pts = np.array([[[[10.0 + 30 * i, 100.0 - 20 * i]]]], np.float32)
        check(model, hf, embs, input_points=pts, input_labels=np.array([[[1]]]))
    check(model, hf, embs, input_points=POINTS[:, :1], input_labels=LABELS[:, :1], multimask_output=False)


def test_pixel_values_and_no_prompt(models):
    model, hf, _ = models
    px = pixels(seed=9)
    ours = model(pixel_values=px)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px))
    np.testing.assert_allclose(ours["pred_masks"], ref.pred_masks.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours["iou_scores"], ref.iou_scores.numpy(), atol=1e-4, rtol=1e-4)


def test_mask_input(models):
    model, hf, embs = models
    mask = np.random.default_rng(2).standard_normal((1, 1, 32, 32)).astype(np.float32)
    check(model, hf, embs, input_points=POINTS[:, :1], input_labels=LABELS[:, :1], input_masks=mask)


def test_stable_single_mask_branch(models):
    """With the stability threshold at 0 the single-mask token is always kept (the other branch of the rule)."""
    model, hf, embs = models
    stable = Sam2Model(dataclasses.replace(model.config, stability_thresh=0.0), model.params)
    hf.mask_decoder.dynamic_multimask_stability_thresh = 0.0
    try:
        a = check(stable, hf, embs, input_points=POINTS, input_labels=LABELS, multimask_output=False)
    finally:
        hf.mask_decoder.dynamic_multimask_stability_thresh = 0.98
    b = model(image_embeddings=embs, input_points=POINTS, input_labels=LABELS, multimask_output=False)
    assert np.abs(a["pred_masks"] - b["pred_masks"]).max() > 1e-3  # the default rule picked other masks


def test_labels_matter(models):
    model, _, embs = models
    a = model(image_embeddings=embs, input_points=POINTS, input_labels=LABELS)["pred_masks"]
    b = model(image_embeddings=embs, input_points=POINTS, input_labels=np.ones_like(LABELS))["pred_masks"]
    assert np.abs(a - b).max() > 1e-3


def test_original_layout(models, tmp_path):
    """The original facebookresearch/sam2 key names (renamed as HF's conversion script maps them) load the same."""
    from safetensors.numpy import load_file, save_file

    model, hf, embs = models
    src = hf.config
    hf.save_pretrained(tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    renamed = {}
    for k, v in state.items():
        renamed[to_original(k)] = v
    point = renamed.pop("sam_prompt_encoder.point_embeddings.weight")
    for i in range(point.shape[0]):
        renamed[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = point[i:i + 1].copy()
    renamed.pop("shared_image_embedding.positional_embedding")  # the original shares the prompt encoder's
    renamed["memory_encoder.out_proj.weight"] = np.zeros((2, 2), np.float32)  # video-only weights are ignored
    (tmp_path / "orig").mkdir()
    save_file(renamed, str(tmp_path / "orig" / "model.safetensors"))
    src.save_pretrained(tmp_path / "orig")
    orig = kiln.load(tmp_path / "orig")
    with torch.no_grad():  # make HF's two position matrices one, as in real checkpoints
        hf_pe = hf.shared_image_embedding.positional_embedding.clone()
        hf.shared_image_embedding.positional_embedding.copy_(hf.prompt_encoder.shared_embedding.positional_embedding)
    try:
        check(orig, hf, embs, input_points=POINTS, input_labels=LABELS, input_boxes=BOXES)
    finally:
        with torch.no_grad():
            hf.shared_image_embedding.positional_embedding.copy_(hf_pe)
    for a, b in zip(orig.embed_image(pixels(seed=7)), embs):
        np.testing.assert_allclose(a, b, atol=1e-5)


def to_original(k: str) -> str:
    """HF key -> the original repo's name (the inverse of HF's convert_sam2_to_hf.py mapping)."""
    import re

    k = k.replace("vision_encoder.backbone.patch_embed.projection", "image_encoder.trunk.patch_embed.proj")
    k = k.replace("vision_encoder.backbone.", "image_encoder.trunk.")
    k = re.sub(r"vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv.", k)
    k = k.replace("prompt_encoder.shared_embedding.positional_embedding",
                  "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    k = k.replace("prompt_encoder.point_embed", "sam_prompt_encoder.point_embeddings")
    k = re.sub(r"prompt_encoder\.mask_embed\.conv1", "sam_prompt_encoder.mask_downscaling.0", k)
    k = re.sub(r"prompt_encoder\.mask_embed\.layer_norm1", "sam_prompt_encoder.mask_downscaling.1", k)
    k = re.sub(r"prompt_encoder\.mask_embed\.conv2", "sam_prompt_encoder.mask_downscaling.3", k)
    k = re.sub(r"prompt_encoder\.mask_embed\.layer_norm2", "sam_prompt_encoder.mask_downscaling.4", k)
    k = re.sub(r"prompt_encoder\.mask_embed\.conv3", "sam_prompt_encoder.mask_downscaling.6", k)
    k = re.sub(r"^prompt_encoder\.", "sam_prompt_encoder.", k)
    k = k.replace("mask_decoder.upscale_conv1", "mask_decoder.output_upscaling.0")
    k = k.replace("mask_decoder.upscale_layer_norm", "mask_decoder.output_upscaling.1")
    k = k.replace("mask_decoder.upscale_conv2", "mask_decoder.output_upscaling.3")
    k = k.replace("layer_norm_final_attn", "norm_final_attn")
    k = re.sub(r"(transformer\.layers\.\d+)\.mlp\.proj_in", r"\1.mlp.layers.0", k)
    k = re.sub(r"(transformer\.layers\.\d+)\.mlp\.proj_out", r"\1.mlp.layers.1", k)
    k = re.sub(r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.0\.",
               r"\1.layers.1.", k)
    k = re.sub(r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.proj_in\.",
               r"\1.layers.0.", k)
    k = re.sub(r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.proj_out\.",
               r"\1.layers.2.", k)
    k = re.sub(r"(image_encoder\.trunk\.blocks\.\d+)\.mlp\.proj_in", r"\1.mlp.layers.0", k)
    k = re.sub(r"(image_encoder\.trunk\.blocks\.\d+)\.mlp\.proj_out", r"\1.mlp.layers.1", k)
    k = k.replace(".layer_norm", ".norm")
    k = k.replace(".o_proj.", ".out_proj.")
    k = re.sub(r"^mask_decoder\.", "sam_mask_decoder.", k)
    return k.replace("no_memory_embedding", "no_mem_embed")


def test_set_image_keeps_embeddings_on_the_backend(models):
    """set_image: embeddings stay graph state; prompts without pixel_values / image_embeddings use them."""
    model, hf, embs = models
    model.set_image(pixels(seed=7))
    out = model(input_points=POINTS, input_labels=LABELS, input_boxes=BOXES)
    masks, iou, _ = hf_run(hf, embs, input_points=POINTS, input_labels=LABELS, input_boxes=BOXES)
    assert out["image_embeddings"] is None
    np.testing.assert_allclose(out["pred_masks"], masks, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["iou_scores"], iou, atol=1e-4, rtol=1e-4)
    model.set_image(pixels(seed=8))   # a new image replaces the cached one
    other = model(input_points=POINTS, input_labels=LABELS, input_boxes=BOXES)
    ref = model(image_embeddings=model.embed_image(pixels(seed=8)), input_points=POINTS, input_labels=LABELS,
                input_boxes=BOXES)
    np.testing.assert_allclose(other["pred_masks"], ref["pred_masks"], atol=1e-5)
    assert np.abs(other["pred_masks"] - out["pred_masks"]).max() > 1e-3
