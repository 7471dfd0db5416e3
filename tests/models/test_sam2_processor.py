"""SAM 2 pre/post-processing against torch re-implementations of HF's steps (and HF's real processor where
torchvision is installed), input errors, and `kiln run` on a SAM 2 checkpoint."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from sam2_checkpoints import IMAGE, make_checkpoint  # noqa: E402

import kiln  # noqa: E402
from kiln.errors import InputError  # noqa: E402
from kiln.io.antialias_resize import resize_bilinear_antialias  # noqa: E402
from kiln.models.sam2_processor import Sam2Processor  # noqa: E402

F = torch.nn.functional
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2_proc")
    make_checkpoint(path, seed=11)
    return path


def photo(h=90, w=150, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(90, 150), (300, 200), (128, 128)])
def test_resize_is_torch_uint8_antialias(shape):
    """torchvision's resize of a uint8 tensor runs this torch kernel: bit-exact, down and up."""
    img = photo(*shape)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(IMAGE, IMAGE), mode="bilinear",
                        antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(resize_bilinear_antialias(img, IMAGE, IMAGE), ref)


def test_pixel_values_match_torch_steps():
    img = photo()
    out = Sam2Processor(IMAGE).preprocess(Image.fromarray(img))
    t = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(IMAGE, IMAGE), mode="bilinear",
                      antialias=True).to(torch.float32)
    ref = (t - torch.tensor(MEAN)[:, None, None] * 255.0) / (torch.tensor(STD)[:, None, None] * 255.0)
    assert out["original_sizes"] == [(90, 150)]
    np.testing.assert_allclose(out["pixel_values"], ref.numpy(), atol=1e-6)


def test_coordinates_and_post_processing_match_torch_steps():
    proc = Sam2Processor(IMAGE)
    sizes = [(90, 150)]
    pts = proc.scale_points([[[[10.0, 20.0], [149.0, 89.5]], [[-10, -10], [75.0, 45.0]]]], sizes)
    ref = torch.tensor([[[[10.0, 20.0], [149.0, 89.5]], [[-10, -10], [75.0, 45.0]]]])
    scaled = ref.clone()
    scaled[..., 0] *= IMAGE / 150
    scaled[..., 1] *= IMAGE / 90
    scaled[0, 1, 0] = -10  # padding points stay
    np.testing.assert_array_equal(pts, scaled.numpy())
    boxes = proc.scale_boxes([[[5.0, 6.0, 100.0, 80.0]]], sizes)
    np.testing.assert_array_equal(boxes, (torch.tensor([[[5.0, 6.0, 100.0, 80.0]]]) *
                                          torch.tensor([IMAGE / 150, IMAGE / 90] * 2)).numpy())
    masks = np.random.default_rng(4).standard_normal((1, 2, 3, 32, 32)).astype(np.float32)
    ours = proc.post_process_masks(masks, sizes)
    ref = F.interpolate(torch.from_numpy(masks[0]), sizes[0], mode="bilinear", align_corners=False) > 0.0
    assert ours[0].shape == (2, 3, 90, 150)
    np.testing.assert_array_equal(ours[0], ref.numpy())


def test_ragged_points_are_padded():
    """Rows with fewer points get (-10, -10) points labelled -10, as HF's processor pads them."""
    out = Sam2Processor(IMAGE)(Image.fromarray(photo()), input_points=[[[[10.0, 20.0]], [[30.0, 40.0], [50.0, 60.0]]]],
                               input_labels=[[[1], [1, 0]]])
    assert out["input_points"].shape == (1, 2, 2, 2) and out["input_labels"].tolist() == [[[1, -10], [1, 0]]]
    np.testing.assert_array_equal(out["input_points"][0, 0, 1], [-10, -10])


def test_hf_processor():
    """HF's real Sam2Processor (needs torchvision; run where it is installed)."""
    pytest.importorskip("torchvision")
    import transformers

    image_cls = getattr(transformers, "Sam2ImageProcessorFast", None) or transformers.Sam2ImageProcessor
    hf = transformers.Sam2Processor(image_processor=image_cls(size={"height": IMAGE, "width": IMAGE}))
    img = photo(120, 200, seed=3)
    points = [[[[30.0, 40.0], [150.0, 100.0]], [[20.0, 70.0]]]]   # ragged: HF pads the second row
    labels, boxes = [[[1, 0], [1]]], [[[10.0, 15.0, 180.0, 110.0], [5.0, 5.0, 60.0, 90.0]]]
    ref = hf(images=Image.fromarray(img), input_points=points, input_labels=labels, input_boxes=boxes,
             return_tensors="pt")
    ours = Sam2Processor(IMAGE)(Image.fromarray(img), input_points=points, input_labels=labels, input_boxes=boxes)
    np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"].numpy(), atol=1e-6)
    for k in ("input_points", "input_labels", "input_boxes"):
        np.testing.assert_array_equal(ours[k], ref[k].numpy())
    masks = np.random.default_rng(5).standard_normal((1, 1, 3, 32, 32)).astype(np.float32)
    for a, b in zip(Sam2Processor(IMAGE).post_process_masks(masks, [(120, 200)]),
                    hf.image_processor.post_process_masks(torch.from_numpy(masks), ref["original_sizes"])):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("kw, match", [
    (dict(input_points=[[[[10.0, 200.0]]]], input_labels=[[[1]]]), r"input_points\[0, 0, 0\].*outside image 0"),
    (dict(input_points=[[[[10.0, 20.0]]]], input_labels=[[[1, 1]]]), r"input_labels has shape \(1, 1, 2\)"),
    (dict(input_points=[[[[10.0, 20.0]]]]), "without input_labels"),
    (dict(input_boxes=[[[50.0, 10.0, 20.0, 40.0]]]), r"input_boxes\[0, 0\].*malformed"),
    (dict(input_boxes=[[[5.0, 10.0, 20.0]]]), "input_boxes must have 3 levels with 4 numbers"),
    (dict(input_boxes=[[[5.0, 10.0, 500.0, 40.0]]]), "outside image 0"),
])
def test_processor_errors(kw, match):
    with pytest.raises(InputError, match=match):
        Sam2Processor(IMAGE)(Image.fromarray(photo()), **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(input_points=np.array([[[[10.0, 300.0]]]], np.float32), input_labels=np.array([[[1]]])),
     r"input_points\[0, 0, 0\].*outside the model's 128x128 input"),
    (dict(input_points=np.zeros((1, 1, 2, 2), np.float32), input_labels=np.array([[[1]]])),
     r"input_labels has shape \(1, 1, 1\), expected one label per point: \(1, 1, 2\)"),
    (dict(input_points=np.zeros((1, 1, 1, 2), np.float32), input_labels=np.array([[[7]]])),
     r"input_labels holds \[7\]"),
    (dict(input_boxes=np.array([[[30.0, 10.0, 20.0, 40.0]]], np.float32)), r"input_boxes\[0, 0\].*x1 < x0"),
    (dict(input_boxes=np.zeros((1, 1, 3), np.float32)), r"input_boxes must be \[batch=1, boxes, 4\]"),
    (dict(input_points=np.zeros((1, 1, 1, 2), np.int64), input_labels=np.array([[[1]]])), "must be a float array"),
])
def test_model_input_errors(checkpoint, kw, match):
    model = kiln.load(checkpoint)
    embs = [np.zeros((1, 4, 32, 32), np.float32), np.zeros((1, 8, 16, 16), np.float32),
            np.zeros((1, 32, 8, 8), np.float32)]
    with pytest.raises(InputError, match=match):
        model(image_embeddings=embs, **kw)


def test_cli_run_writes_overlay(checkpoint, tmp_path, monkeypatch, capsys):
    from kiln.cli import main

    img = photo(100, 160, seed=8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(checkpoint), "--image", "photo.png", "--point", "40,50", "--box", "10,10,120,90"]) == 0
    text = capsys.readouterr().out
    model = kiln.load(checkpoint)
    inputs = model.processor(Image.fromarray(img), input_points=[[[[40.0, 50.0]]]], input_labels=[[[1]]],
                             input_boxes=[[[10.0, 10.0, 120.0, 90.0]]])
    out = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],
                input_labels=inputs["input_labels"], input_boxes=inputs["input_boxes"], multimask_output=False)
    assert text.splitlines()[0] == f"iou_scores: {out['iou_scores'][0, 0, 0]:.4f}"
    written = np.asarray(Image.open(tmp_path / "photo.mask.png"))
    mask = model.processor.post_process_masks(out["pred_masks"], inputs["original_sizes"])[0][0, 0]
    assert written.shape == img.shape and 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(written[~mask], img[~mask])
    assert (written[mask] != img[mask]).any()


def test_cli_point_outside_image(checkpoint, tmp_path, monkeypatch, capsys):
    from kiln.cli import main

    Image.fromarray(photo(100, 160)).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(checkpoint), "--image", "photo.png", "--point", "400,50"]) == 2
    assert "input_points[0, 0, 0] = [400.0, 50.0] lies outside image 0 (160x100 pixels" in capsys.readouterr().err
