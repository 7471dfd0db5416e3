"""The Idefics3 / SmolVLM processor vs HF's Pillow-backed one: input_ids, pixel_values and
pixel_attention_mask identical for Pillow-made images of several sizes and aspect ratios (smaller
than a tile, very wide, tall, grayscale, with transparency), several images per prompt, a batch with
padding tiles; and video frames with SmolVLM2's frame prompt layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kiln.errors import InputError
from kiln.io.tokenizer import Tokenizer
from kiln.models.smolvlm_processor import ImageSettings, SmolVLMProcessor, number_words
from vlm_checkpoints import hf_processor

transformers = pytest.importorskip("transformers")


def picture(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    bands = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, bands), dtype=np.uint8)
    arr[: h // 2] //= 2                                          # some structure for the resizers
    return Image.fromarray(arr[..., 0] if bands == 1 else arr, mode)


@pytest.fixture(scope="module", params=[{}, {"do_image_splitting": False}], ids=["split", "no_split"])
def processors(request, tmp_path_factory):
    hf = hf_processor(**request.param)
    d = tmp_path_factory.mktemp("processor")
    hf.save_pretrained(d)
    # the PIL-backed processor itself: reloading could pick torchvision's backend where it is installed
    return SmolVLMProcessor.from_dir(d, Tokenizer.from_dir(d)), hf


def same(ours, theirs):
    assert set(ours) == {k for k in theirs if k in ("input_ids", "attention_mask", "pixel_values",
                                                       "pixel_attention_mask")}
    for k, v in ours.items():
        np.testing.assert_array_equal(v, np.asarray(theirs[k]), err_msg=k)


@pytest.mark.parametrize("size", [(20, 14), (64, 48), (37, 90), (200, 30), (33, 33)],
                         ids=["smaller_than_a_tile", "landscape", "portrait", "very_wide", "just_over_a_tile"])
def test_one_image_of_any_shape(processors, size):
    ours, hf = processors
    img = picture(*size)
    text = "User:<image>Describe the image.<end_of_utterance>\nAssistant:"
    same(ours(text, images=[img]), hf(text=[text], images=[[img]], return_tensors="np"))


def test_two_images_modes_and_a_padded_batch(processors):
    ours, hf = processors
    a, b, c = picture(90, 40, "RGBA", 1), picture(30, 50, "L", 2), picture(70, 70, seed=3)
    text = "<image>first, then<image> second"
    same(ours(text, images=[a, b]), hf(text=[text], images=[[a, b]], return_tensors="np"))
    batch = ["<image>one<image>", "<image>two"]          # left-padded text, a zero padding tile
    same(ours(batch, images=[[a, c], [b]]), hf(text=batch, images=[[a, c], [b]], padding=True, padding_side="left",
                                               return_tensors="np"))


def test_chat_prompt_from_the_checkpoint_template(processors):
    ours, hf = processors
    img = picture(50, 40, seed=4)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = hf.apply_chat_template(messages, add_generation_prompt=True)
    same(ours.chat("What is this?", images=[img]), hf(text=[text], images=[[img]], return_tensors="np"))


def test_bad_images_and_placeholder_counts_are_named(processors, tmp_path):
    ours, _ = processors
    with pytest.raises(InputError, match=r"has 2 <image> placeholders but 1 images"):
        ours("<image><image>", images=[picture(10, 10)])
    with pytest.raises(InputError, match=r"has 4 channels .* expected an RGB image"):
        ours("<image>", images=[np.zeros((8, 8, 4), np.uint8)])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=r"cannot decode .*broken.png.* as an image"):
        ours("<image>", images=[str(bad)])


def test_video_frames_and_prompt_layout(processors, tmp_path):
    ours, _ = processors
    from transformers.models.smolvlm import processing_smolvlm as hf_smolvlm

    frames = [picture(48, 36, seed=10 + i) for i in range(3)]
    for i, f in enumerate(frames):
        f.save(tmp_path / f"frame_{i:03d}.png")
    out = ours("<video>What happens?", video=str(tmp_path))
    single = hf_smolvlm._prompt_single_image(4, fake_token_around_image="<fake_token_around_image>",
                                             image_token="<image>", global_image_token="<global-img>")
    expected = hf_smolvlm.DEFAULT_VIDEO_INTRO.format(frame_count="three", video_duration="0:00:00")
    for _ in range(3):   # frames without a rate: HF takes 24 fps, so all stamps are 00:00
        expected += hf_smolvlm.FRAME_TIMESTAMP_MESSAGE.format(timestamp="00:00") + single
    expected += hf_smolvlm.DEFAULT_MEDIA_OUTTRO + "What happens?"
    np.testing.assert_array_equal(out["input_ids"][0], ours.tokenizer.encode(expected))
    assert out["pixel_values"].shape == (1, 3, 3, 32, 32)
    tile = ours.tiles(frames[1].resize((32, 32)))   # each frame squashed to one tile
    assert out["pixel_values"][0, 1].shape == tile.pixels[0].shape
    assert [number_words(n) for n in (8, 21, 64, 100, 345)] == ["eight", "twenty-one", "sixty-four", "one hundred",
                                                               "three hundred and forty-five"]


def test_video_sampling_matches_smolvlm2():
    pytest.importorskip("torchvision")
    from transformers import SmolVLMVideoProcessor
    from transformers.video_utils import VideoMetadata

    hf = SmolVLMVideoProcessor(num_frames=8, fps=2)
    ours = SmolVLMProcessor(None, None, 4, video_frames=8, video_fps=2)
    for total, fps in ((300, 30.0), (40, 10.0), (12, 24.0)):
        meta = VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps)
        np.testing.assert_array_equal(ours.sample_frames(total, fps), hf.sample_frames(meta, num_frames=8, fps=2))


def write_video(path, frames=30, fps=10):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for i in range(frames):
            arr = np.full((32, 48, 3), i * 8, np.uint8)
            arr[:, : i + 1] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_video_file_is_sampled_and_stamped(processors, tmp_path):
    ours, _ = processors
    path = tmp_path / "clip.mp4"
    write_video(path)                       # 3 s at 10 fps; SmolVLM2 samples 1 fps: 3 frames
    out = ours("<video>What happens?", video=str(path))
    text = ours.tokenizer.decode(out["input_ids"][0])
    assert text.startswith("You are provided the following series of three frames from a 0:00:03 [H:MM:SS] video.")
    assert [text.count(f"Frame from 00:{s:02d}:") for s in (0, 1, 2)] == [1, 1, 1]
    assert out["pixel_values"].shape == (1, 3, 3, 32, 32)
    with pytest.raises(InputError, match="cannot decode"):
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"not a video at all")
        ours("<video>", video=str(bad))
    with pytest.raises(InputError, match="no <video> placeholder"):
        ours("no placeholder", video=str(path))


def test_video_pixels_close_to_hf_torchvision_processor(tmp_path):
    """HF's video processor runs on torchvision (LANCZOS, or BICUBIC before torchvision 0.27), so its
    pixels are near, not equal to, the Pillow path's; the frame layout and sampling are the same."""
    pytest.importorskip("torchvision")
    from transformers import SmolVLMVideoProcessor

    frames = np.stack([np.asarray(picture(48, 36, seed=20 + i)) for i in range(4)])
    hf = SmolVLMVideoProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    ref = hf(videos=[frames], do_sample_frames=False, return_tensors="np")["pixel_values"]
    ours = SmolVLMProcessor(None, ImageSettings(longest_edge=64, tile=32), 4)
    got = np.stack(ours.video(list(frames))[0])
    assert ref.shape == (1, *got.shape)
    assert np.abs(got - ref[0]).mean() < 0.05
