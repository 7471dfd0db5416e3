"""The Idefics3 / SmolVLM processor: images (or video frames) and text -> input_ids, pixel_values,
pixel_attention_mask, equal to HF's Pillow-backed processor.

An image is resized so its longest edge is `size.longest_edge` (even short edge), then up to a
whole number of `max_image_size` tiles; a bigger-than-one-tile image is cut into rows x cols
tiles plus the whole image downscaled to one tile (the global image). Each `<image>` in the
prompt becomes, per tile, `<fake_token_around_image><row_r_col_c>` + image_seq_len `<image>`
tokens, and then the global image's `<fake_token_around_image><global-img>` + tokens +
`<fake_token_around_image>`. A video is sampled frames, each squashed to one tile, announced
by SmolVLM2's frame prompt ("Frame from MM:SS:" before each frame's tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kiln.errors import InputError
from kiln.files import read_json_if_present
from kiln.io.config import config_int
from kiln.io.errors import ConfigError
from kiln.io.image import RESAMPLE, resize, rgb_array, to_pixels

MAX_IMAGE_SIZE = 4096
IMAGENET_STANDARD = (0.5, 0.5, 0.5)
VIDEO_INTRO = "You are provided the following series of {frame_count} frames from a {video_duration} [H:MM:SS] video.\n"
MEDIA_OUTTRO = "\n\n"
FRAME_TIMESTAMP = "\nFrame from {timestamp}:"
DEFAULT_FPS = 24   # HF's assumption for frames given without their video's rate
# SmolVLM's processor renders a conversation holding a video with this template (not the checkpoint's)
VIDEO_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


@dataclass(frozen=True)
class ImageSettings:
    """preprocessor_config.json of an Idefics3 / SmolVLM image processor (HF's defaults where absent)."""

    longest_edge: int | None = 4 * 364
    tile: int = 364
    splitting: bool = True
    resample: int = RESAMPLE["lanczos"]
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = IMAGENET_STANDARD
    std: tuple[float, ...] | None = IMAGENET_STANDARD

    @classmethod
    def from_dict(cls, cfg: dict, where: str) -> "ImageSettings":
        def edge(key, default):
            v = cfg.get(key)
            if v is None:
                return default
            if not isinstance(v, dict) or "longest_edge" not in v:
                raise ConfigError(f"{where}: {key!r} must be {{'longest_edge': N}}, got {v!r}")
            return config_int(_Where(v, f"{where} ({key})"), "longest_edge", max=MAX_IMAGE_SIZE)

        resample = cfg.get("resample", RESAMPLE["lanczos"])
        if resample not in RESAMPLE.values():
            raise ConfigError(f"{where}: resample {resample!r} is not a Pillow filter code {sorted(RESAMPLE.values())}")
        normalize = cfg.get("do_normalize", True)
        return cls(longest_edge=edge("size", 4 * 364) if cfg.get("do_resize", True) else None,
                   tile=edge("max_image_size", 364), splitting=bool(cfg.get("do_image_splitting", True)),
                   resample=resample,
                   rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
                   mean=tuple(cfg.get("image_mean", IMAGENET_STANDARD)) if normalize else None,
                   std=tuple(cfg.get("image_std", IMAGENET_STANDARD)) if normalize else None)


class _Where(dict):
    def __init__(self, values, path):
        super().__init__(values)
        self.path = path


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """The longest edge set to `longest` (up or down), the other scaled and rounded up to even, capped at 4096."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def whole_tiles_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Both edges up to a multiple of `tile`, the short one after keeping the aspect ratio (HF's rule)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


@dataclass
class ImageTiles:
    pixels: list[np.ndarray]    # float32 [3, tile, tile] each
    rows: int = 0               # 0 x 0: one tile, no split
    cols: int = 0


def number_words(n: int) -> str:
    """English words for 0 <= n < 10**6 ("sixty-four"), as num2words writes frame counts."""
    ones = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
    tens = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
    if n < 20:
        return ones[n]
    if n < 100:
        return tens[n // 10] + ("" if n % 10 == 0 else "-" + ones[n % 10])
    if n < 1000:
        rest = n % 100
        return ones[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + (
        "" if rest == 0 else (" and " if rest < 100 else ", ") + number_words(rest))


@dataclass
class SmolVLMProcessor:
    """Images + text -> model inputs (HF Idefics3Processor / SmolVLMProcessor with their Pil image processor)."""

    tokenizer: Any
    images: ImageSettings
    image_seq_len: int
    video_frames: int = 64          # SmolVLM2 video sampling: at most this many frames ...
    video_fps: float = 1.0          # ... at this rate
    video_longest_edge: int | None = None
    tokens: dict = field(default_factory=lambda: {
        "image": "<image>", "fake": "<fake_token_around_image>", "global": "<global-img>", "video": "<video>"})

    @classmethod
    def from_dir(cls, d: str | Path, tokenizer, model_cfg=None) -> "SmolVLMProcessor":
        d = Path(d)
        proc = read_json_if_present(d / "processor_config.json", "processor config", ConfigError) or {}
        # transformers 5 nests the image/video processors in processor_config.json; 4.x wrote their own files
        pre = proc.get("image_processor") or read_json_if_present(
            d / "preprocessor_config.json", "image processor config", ConfigError) or {}
        video = proc.get("video_processor") or read_json_if_present(
            d / "video_preprocessor_config.json", "video processor config", ConfigError) or {}
        seq = proc.get("image_seq_len")
        if seq is None:
            seq = model_cfg.tokens_per_tile if model_cfg is not None else 169
        if model_cfg is not None and seq != model_cfg.tokens_per_tile:
            raise ConfigError(f"{d / 'processor_config.json'}: image_seq_len {seq} but the model makes "
                              f"{model_cfg.tokens_per_tile} tokens per tile")
        sampling = video.get("video_sampling") or {}
        video_size = sampling.get("video_size") or video.get("size") or {}
        out = cls(tokenizer, ImageSettings.from_dict(pre, str(d / "preprocessor_config.json")), int(seq),
                  video_frames=int(sampling.get("max_frames", video.get("num_frames", 64))),
                  video_fps=float(sampling.get("fps", video.get("fps", 1))),
                  video_longest_edge=video_size.get("longest_edge"))
        for name, token in out.tokens.items():
            if name != "video" and tokenizer.token_to_id(token) is None:
                raise ConfigError(f"{d}: the tokenizer has no {token!r} token, which the image prompt needs")
        return out

    # ---- images -------------------------------------------------------------------------------
    def tiles(self, image) -> ImageTiles:
        """One image -> its tiles (row-major, then the global image) as normalized pixels."""
        s, rgb = self.images, rgb_array(image)
        if s.longest_edge is not None:
            rgb = resize(rgb, *longest_edge_size(*rgb.shape[:2], s.longest_edge), s.resample)
        t = s.tile
        if not s.splitting:
            return ImageTiles([self._pixels(resize(rgb, t, t, s.resample))])
        rgb = resize(rgb, *whole_tiles_size(*rgb.shape[:2], t), s.resample)
        h, w = rgb.shape[:2]
        if h <= t and w <= t:
            return ImageTiles([self._pixels(rgb)])
        rows, cols = (h - t) // t + 1, (w - t) // t + 1
        crops = [rgb[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(rows) for c in range(cols)]
        crops.append(resize(rgb, t, t, s.resample))
        return ImageTiles([self._pixels(c) for c in crops], rows, cols)

    def _pixels(self, rgb: np.ndarray) -> np.ndarray:
        return to_pixels(rgb, self.images.rescale, self.images.mean, self.images.std)

    def image_prompt(self, tiles: ImageTiles) -> str:
        tok, n = self.tokens, self.image_seq_len
        glob = f"{tok['fake']}{tok['global']}{tok['image'] * n}{tok['fake']}"
        if tiles.rows == 0 and tiles.cols == 0:
            return glob
        grid = "".join("".join(f"{tok['fake']}<row_{r + 1}_col_{c + 1}>{tok['image'] * n}" for c in range(tiles.cols))
                       + "\n" for r in range(tiles.rows))
        return grid + "\n" + glob

    # ---- video --------------------------------------------------------------------------------
    def sample_frames(self, total: int, fps: float, skip_secs: float = 1.0) -> np.ndarray:
        """Frame indices: at most `video_frames` at `video_fps`, evenly spread, skipping the first and last
        second of a long video (SmolVLM2's rule)."""
        duration = total / fps
        wanted = max(min(int(round(self.video_fps * duration)), self.video_frames), 1)
        start, end = 0, total - 1
        if skip_secs > 0 and duration - 2 * skip_secs > self.video_frames * self.video_fps:
            start, end = int(skip_secs * fps), int(total - skip_secs * fps)
        start, end = max(0, start), min(end, total - 1)
        if start >= end:
            start, end = 0, total - 1
        return np.unique(np.linspace(start, end, wanted, dtype=int))

    def video(self, source) -> tuple[list[np.ndarray], str]:
        """A video file, a frames directory (kiln.io.video) or a list of frames -> (frame pixels, prompt)."""
        from kiln.io.video import Video, open_video

        if isinstance(source, (list, tuple)):
            indices, fps, frames, duration = list(range(len(source))), None, [rgb_array(f, "frame") for f in source], None
        else:
            v = source if isinstance(source, Video) else open_video(source)
            if v.fps is None:
                indices, fps = list(range(v.total_frames)), None
            else:
                indices, fps = [int(i) for i in self.sample_frames(v.total_frames, v.fps)], v.fps
            frames, duration = v.frames(indices), v.duration
        rate = fps or DEFAULT_FPS
        stamps = [i / rate for i in indices]
        s, t = self.images, self.images.tile
        pixels = []
        for rgb in frames:
            if self.video_longest_edge or s.longest_edge:
                rgb = resize(rgb, *longest_edge_size(*rgb.shape[:2], self.video_longest_edge or s.longest_edge),
                             s.resample)
            pixels.append(self._pixels(resize(rgb, t, t, s.resample)))
        seconds = int(duration) if duration is not None else int(stamps[-1])
        prompt = VIDEO_INTRO.format(frame_count=number_words(len(frames)), video_duration=str(timedelta(seconds=seconds)))
        single = self.image_prompt(ImageTiles([]))
        for sec in stamps:
            prompt += FRAME_TIMESTAMP.format(timestamp=f"{int(sec // 60):02d}:{int(sec % 60):02d}") + single
        return pixels, prompt + MEDIA_OUTTRO

    # ---- text + images -> inputs ----------------------------------------------------------------
    def __call__(self, text: str | Sequence[str], images=None, video=None,
                 add_special_tokens: bool = True) -> dict[str, np.ndarray]:
        """{input_ids, attention_mask[, pixel_values, pixel_attention_mask]} for a prompt (or a batch, left
        -padded) whose `<image>` placeholders each take one image (`images`: a list per prompt, or one flat
        list for a single prompt) and whose `<video>` takes `video`."""
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = self._images_per_prompt(texts, images)
        tok = self.tokens
        expanded, tiles_per_prompt = [], []
        for t, imgs in zip(texts, per_prompt):
            found = t.count(tok["image"])
            if found != len(imgs):
                raise InputError(f"the prompt has {found} {tok['image']} placeholders but {len(imgs)} images were "
                                 f"given for it; put one {tok['image']} where each image goes")
            tiles = [self.tiles(im) for im in imgs]
            parts = t.split(tok["image"])
            out = parts[0] + "".join(self.image_prompt(ti) + p for ti, p in zip(tiles, parts[1:]))
            pixels = [px for ti in tiles for px in ti.pixels]
            if tok["video"] in out:
                if video is None or out.count(tok["video"]) != 1 or len(texts) != 1:
                    raise InputError(f"the prompt has {out.count(tok['video'])} {tok['video']} placeholders; give one "
                                     f"--video for one {tok['video']} in a single prompt")
                frames, vprompt = self.video(video)
                out = out.replace(tok["video"], vprompt)
                pixels += frames
            elif video is not None:
                raise InputError(f"a video was given but the prompt has no {tok['video']} placeholder")
            expanded.append(out)
            tiles_per_prompt.append(pixels)
        ids = [self.tokenizer.encode(t, add_special_tokens=add_special_tokens) for t in expanded]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = np.full((len(ids), width), pad, np.int64)
        mask = np.zeros((len(ids), width), np.int64)
        for r, row in enumerate(ids):
            input_ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
        out = {"input_ids": input_ids, "attention_mask": mask}
        most = max(len(p) for p in tiles_per_prompt)
        if most:
            t = self.images.tile
            px = np.zeros((len(ids), most, 3, t, t), np.float32)
            pmask = np.zeros((len(ids), most, t, t), np.int64)
            for r, tiles in enumerate(tiles_per_prompt):
                for k, p in enumerate(tiles):
                    px[r, k], pmask[r, k] = p, 1
            out["pixel_values"], out["pixel_attention_mask"] = px, pmask
        return out

    def _images_per_prompt(self, texts: list[str], images) -> list[list]:
        if images is None:
            return [[] for _ in texts]
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(texts) == 1 and not (images and isinstance(images[0], (list, tuple))):
            return [images]
        if len(images) != len(texts) or not all(isinstance(i, (list, tuple)) for i in images):
            raise InputError(f"{len(texts)} prompts need a list of images per prompt, got {len(images)} entries")
        return [list(i) for i in images]

    def chat(self, prompt: str, images: Sequence = (), video=None) -> dict[str, np.ndarray]:
        """One user turn (images first, then the text) through the checkpoint's chat template, with the
        generation prompt, then `__call__` (SmolVLM's processor renders a video turn with its own template)."""
        content = [{"type": "image"} for _ in images] + ([{"type": "video"}] if video is not None else [])
        messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]
        if video is not None:
            from kiln.io.tokenizer import _compile_template

            text = _compile_template(VIDEO_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                                                 **self.tokenizer.special_tokens_map)
        else:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        bos = self.tokenizer.special_tokens_map.get("bos_token")
        return self(text, images=list(images) or None, video=video,
                    add_special_tokens=not (bos and text.startswith(bos)))
