"""`kiln run <smolvlm-checkpoint> --image ... --prompt ...` end to end (the checkpoint's processor and
chat template, greedy generation) against HF's processor + generate, and its error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kiln.cli import main
from vlm_checkpoints import save_vlm_checkpoint

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("smolvlm_ckpt")
    hf, processor = save_vlm_checkpoint(d)
    pics = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(70, 40), (20, 30)]):
        p = pics / f"pic{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return d, hf, processor, paths


def hf_reply(hf, processor, images, prompt, new=12):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=[text], images=[[Image.open(p) for p in images]], return_tensors="pt")
    with torch.no_grad():
        out = hf.generate(**inputs, do_sample=False, max_new_tokens=new)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("n_images", [1, 2])
def test_run_describes_images_like_hf(ckpt, capsys, n_images):
    d, hf, processor, paths = ckpt
    images = paths[:n_images]
    args = ["run", str(d), "--prompt", "Describe the image", "--max-new-tokens", "12"]
    for p in images:
        args += ["--image", p]
    assert main(args) == 0
    assert capsys.readouterr().out == hf_reply(hf, processor, images, "Describe the image") + "\n"


def test_run_takes_a_video_of_frames(ckpt, capsys, tmp_path):
    d, _, _, paths = ckpt
    for i, p in enumerate(paths * 2):
        Image.open(p).resize((40, 30)).save(tmp_path / f"{i:02d}.png")
    assert main(["run", str(d), "--video", str(tmp_path), "--prompt", "What happens?",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_run_names_bad_images(ckpt, capsys, tmp_path):
    d, _, _, paths = ckpt
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(["run", str(d), "--image", str(broken), "--prompt", "Hi"]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert main(["run", str(d), "--image", str(tmp_path / "missing.png"), "--prompt", "Hi"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", str(d), "--image", paths[0]]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_generate_text_from_python(ckpt):
    d, hf, processor, paths = ckpt
    from kiln.load import load

    model = load(d)
    pieces = []
    reply = model.generate_text("Describe the image", images=paths[:1], max_new_tokens=12, stream=pieces.append)
    assert reply == hf_reply(hf, processor, paths[:1], "Describe the image")
    assert "".join(pieces) == reply
