"""SAM 2 on device="cuda" (the Triton backend) against HF on the CPU: image embeddings, masks, IoU scores,
also with the embeddings kept on the GPU (set_image)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam2_checkpoints import make_checkpoint, pixels  # noqa: E402

import kiln  # noqa: E402

POINTS = np.array([[[[30.0, 40.0], [90.5, 100.0]], [[64.0, 12.0], [5.0, 120.0]]]], np.float32)
LABELS = np.array([[[1, 0], [1, -10]]], np.int64)
BOXES = np.array([[[10.0, 20.0, 80.0, 110.0], [40.0, 5.0, 127.0, 60.0]]], np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("multimask", [True, False])
def test_sam2_cuda_matches_hf(tmp_path, multimask, monkeypatch):
    # the convolutions run as torch fallbacks, which cuDNN would compute in TF32 by default
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    hf = make_checkpoint(tmp_path, seed=5)
    model = kiln.load(tmp_path, device="cuda")
    px = pixels(seed=7)
    embs = model.embed_image(px)
    with torch.no_grad():
        ref_embs = hf.get_image_embeddings(torch.from_numpy(px))
        ref = hf(image_embeddings=ref_embs, input_points=torch.from_numpy(POINTS),
                 input_labels=torch.from_numpy(LABELS), input_boxes=torch.from_numpy(BOXES),
                 multimask_output=multimask)
    for a, b in zip(embs, ref_embs):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-3, rtol=1e-3)
    out = model(image_embeddings=[e.numpy() for e in ref_embs], input_points=POINTS, input_labels=LABELS,
                input_boxes=BOXES, multimask_output=multimask)
    np.testing.assert_allclose(out["pred_masks"], ref.pred_masks.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(out["iou_scores"], ref.iou_scores.numpy(), atol=1e-3, rtol=1e-3)
    model.set_image(px)   # embeddings kept on the GPU as graph state
    kept = model(input_points=POINTS, input_labels=LABELS, input_boxes=BOXES, multimask_output=multimask)
    np.testing.assert_allclose(kept["pred_masks"], ref.pred_masks.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(kept["iou_scores"], ref.iou_scores.numpy(), atol=1e-3, rtol=1e-3)
