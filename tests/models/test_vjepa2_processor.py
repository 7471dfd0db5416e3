"""V-JEPA 2 preprocessing (vs torch's uint8 antialiased resize and HF's processor), frame readers, `kiln run`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.errors import InputError
from kiln.io.video_frames import read_frames, sample_indices
from kiln.models.vjepa2_processor import preprocess_video, resize_bilinear_antialiased
from vjepa2_checkpoints import make_model, save

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def frames(t, h, w, seed=0):
    """Smooth-ish random frames (noise on a gradient), so resampling differences would show."""
    rs = np.random.RandomState(seed)
    base = np.linspace(0, 200, h * w).reshape(h, w, 1) + rs.randint(0, 56, (t, h, w, 3))
    return base.astype(np.uint8)


@pytest.mark.parametrize("size,new", [((48, 64), (29, 38)), ((30, 20), (45, 30)), ((17, 29), (40, 10))])
def test_resize_equals_torch_uint8_antialiased_bilinear(size, new):
    x = np.ascontiguousarray(frames(2, *size).transpose(0, 3, 1, 2))
    ref = F.interpolate(torch.from_numpy(x), size=new, mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_array_equal(resize_bilinear_antialiased(x, *new), ref.numpy())


def torch_preprocess(video: np.ndarray, crop: int) -> np.ndarray:
    """HF VJEPA2VideoProcessor's steps in torch: short side int(crop*256/224), uint8 antialiased bilinear
    resize, center crop, (x - 255 mean) / (255 std) in float32."""
    x = torch.from_numpy(video).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    short = int(crop * 256 / 224)
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = int((size[0] - crop) / 2.0), int((size[1] - crop) / 2.0)
    x = x[..., top:top + crop, left:left + crop].to(torch.float32)
    mean, std = torch.tensor(MEAN) * (1.0 / (1 / 255)), torch.tensor(STD) * (1.0 / (1 / 255))
    return ((x - mean[:, None, None]) / std[:, None, None])[None].numpy()


@pytest.mark.parametrize("shape,crop", [((3, 40, 60), 32), ((2, 70, 50), 48)])
def test_preprocess_equals_torch_steps(shape, crop):
    video = frames(*shape)
    out = preprocess_video(video, crop_size=crop)
    assert out.shape == (1, shape[0], 3, crop, crop) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch_preprocess(video, crop), atol=1e-6)


@pytest.mark.parametrize("shape,crop", [((4, 40, 60), 32), ((2, 300, 260), 256)])
def test_preprocess_equals_hf_video_processor(shape, crop):
    pytest.importorskip("torchvision")
    import transformers

    video = frames(*shape)
    ref = transformers.VJEPA2VideoProcessor(crop_size=crop)([video], return_tensors="pt")["pixel_values_videos"].numpy()
    np.testing.assert_allclose(preprocess_video(video, crop_size=crop), ref, atol=1e-5)


def test_preprocess_rejects_non_rgb_uint8():
    with pytest.raises(InputError, match=r"uint8 RGB frames \[frames, height, width, 3\]"):
        preprocess_video(frames(2, 20, 20).astype(np.float32))
    with pytest.raises(InputError, match="uint8 RGB"):
        preprocess_video(frames(2, 20, 20)[..., :2])


def write_frames(directory, video, names):
    from PIL import Image

    directory.mkdir()
    for frame, name in zip(video, names):
        Image.fromarray(frame).save(directory / name)
    return directory


def test_frame_directory_in_natural_order(tmp_path):
    video = frames(3, 12, 16)
    d = write_frames(tmp_path / "clip", video, ["f10.png", "f2.png", "f1.png"])
    (d / "notes.txt").write_text("not a frame")
    np.testing.assert_array_equal(read_frames(d), video[[2, 1, 0]])


def test_frame_directory_errors(tmp_path):
    d = write_frames(tmp_path / "mixed", [frames(1, 12, 16)[0], frames(1, 10, 16)[0]], ["a.png", "b.png"])
    with pytest.raises(InputError, match="b.png.*16x10.*16x12"):
        read_frames(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        read_frames(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        read_frames(tmp_path / "missing")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    pytest.importorskip("av")
    with pytest.raises(InputError, match="cannot decode as video"):
        read_frames(tmp_path / "bad.mp4")


def test_video_file_frames(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for frame in frames(5, 24, 32):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    video = read_frames(path)
    assert video.shape == (5, 24, 32, 3) and video.dtype == np.uint8


def test_sample_indices():
    np.testing.assert_array_equal(sample_indices(10, 4), [0, 2, 5, 7])
    np.testing.assert_array_equal(sample_indices(3, 16), [0, 1, 2])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    labels = {i: f"action {i}" for i in range(6)}
    cls = make_model(classifier=True, seed=5, id2label=labels, label2id={v: k for k, v in labels.items()})
    return (save(make_model(seed=6, pred_num_hidden_layers=1), tmp_path_factory.mktemp("enc")),
            save(cls, tmp_path_factory.mktemp("cls")))


def test_kiln_run_video(checkpoints, tmp_path, capsys):
    import kiln
    from kiln.cli import main

    encoder, classifier = checkpoints
    d = write_frames(tmp_path / "clip", frames(7, 20, 24), [f"{i}.png" for i in range(7)])
    assert main(["run", str(encoder), "--video", str(d)]) == 0
    out = capsys.readouterr()
    assert out.out == "last_hidden_state: (1, 32, 48)\n" and "using 4 of 7 frames" in out.err

    assert main(["run", str(classifier), "--video", str(d)]) == 0
    lines = capsys.readouterr().out.splitlines()
    pixels = preprocess_video(frames(7, 20, 24)[[0, 1, 3, 5]], crop_size=16)
    logits = kiln.load(classifier)(pixels)["logits"][0]
    top = np.argsort(-logits)[:5]
    assert [line.split("  ", 1)[1] for line in lines] == [f"action {i}" for i in top]

    assert main(["run", str(encoder)]) == 2
    assert "give --video" in capsys.readouterr().err
    assert main(["run", str(encoder), "--video", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
