"""Idefics3 and SmolVLM / SmolVLM2: a SigLIP image encoder, a pixel-shuffle connector and a Llama decoder.

Each image tile goes through the SigLIP vision tower (kiln.models.siglip, no pooling head);
the connector folds every scale x scale block of patches into one token (pixel shuffle, so a
512 px tile of 32x32 patches becomes 64 tokens of 16x the width) and projects it to the
decoder's width. Those rows replace the embeddings of the prompt's `<image>` tokens
(kiln.nn.features) and the shared Llama decoder (kiln.models.llama + CausalLM) runs as for
text, with its KV cache. The vision graph runs once per prompt: decode steps never see it.

Padded batches follow HF: an all-zero tile is padding and is dropped, and a tile's
`pixel_attention_mask` gives its patch mask and the fractional position ids that map a
smaller grid onto the trained position table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln.errors import InputError
from kiln.io.config import config_int, read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, Value, as_dtype
from kiln.nn import Concat, KeyTable, Linear, Module
from kiln.runtime.compiler import compile as compile_graph
from kiln.runtime.generation import GenerationConfig
from kiln.runtime.language_model import CausalLM

from .llama import LlamaConfig, LlamaGraphs, Llama
from .siglip import SiglipVision, SiglipVisionConfig, siglip_layout

MODEL_TYPES = ("idefics3", "smolvlm")


@dataclass(frozen=True)
class SmolVLMConfig:
    model_type: str
    text: LlamaConfig
    vision: SiglipVisionConfig
    scale_factor: int
    image_token_id: int

    @property
    def tokens_per_tile(self) -> int:
        return self.vision.grid ** 2 // self.scale_factor ** 2

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "SmolVLMConfig":
        where = getattr(cfg, "path", "config.json")
        if cfg.get("model_type") not in MODEL_TYPES:
            raise ConfigError(f"{where}: model_type {cfg.get('model_type')!r} is not one of {MODEL_TYPES}")
        subs = {}
        for name in ("text_config", "vision_config"):
            if not isinstance(cfg.get(name), dict):
                raise ConfigError(f"{where}: needs a {name!r} object")
            subs[name] = _Sub(cfg[name], f"{where} ({name})")
        text_cfg = dict(subs["text_config"])
        text_cfg.setdefault("model_type", "llama")
        text = LlamaConfig.from_hf(_Sub(text_cfg, subs["text_config"].path))
        vision = SiglipVisionConfig.from_hf(subs["vision_config"], use_head_default=False)
        scale = config_int(cfg, "scale_factor", default=2, max=64)
        if vision.grid % scale:
            raise ConfigError(f"{where}: scale_factor {scale} does not divide the {vision.grid}x{vision.grid} "
                              f"patch grid of vision_config (image_size {vision.image_size}, patch_size "
                              f"{vision.patch_size})")
        token = config_int(cfg, "image_token_id", min=0, max=text.vocab_size - 1)
        return cls(cfg["model_type"], text, replace(vision, use_head=False), scale, token)


class _Sub(dict):
    """A nested config object that names where it sits in errors (`.path`)."""

    def __init__(self, values: dict, path: str):
        super().__init__(values)
        self.path = path


# ---- the image encoder ------------------------------------------------------------------------

class ImageEncoder(Module):
    """Vision tower -> pixel shuffle -> modality projection: features [tiles, tokens, text hidden]."""

    def __init__(self, cfg: SmolVLMConfig, dtype="float32"):
        super().__init__("model", dtype)
        self.cfg = cfg
        self.vision = SiglipVision(cfg.vision, "model.vision_model", self.dtype, with_head=False)
        self.projection = Linear("model.connector.modality_projection.proj",
                                 cfg.vision.hidden_size * cfg.scale_factor ** 2, cfg.text.hidden_size, dtype=self.dtype)

    def __call__(self, g: Graph, pixels: Value, position_ids: Value, patch_mask: Value | None = None) -> Value:
        x, _ = self.vision(g, pixels, position_ids, patch_mask)
        return self.projection(g, pixel_shuffle(g, x, self.cfg.scale_factor))


def pixel_shuffle(g: Graph, x: Value, s: int) -> Value:
    """[N, h*w, D] -> [N, h*w/s^2, D*s^2]: each s x s block of patches becomes one token (HF's order)."""
    n, seq, d = x.shape
    side = int(round(seq ** 0.5))
    x = g.reshape(x, shape=[n, side, side // s, d * s])
    x = g.transpose(x, perm=[0, 2, 1, 3])
    x = g.reshape(x, shape=[n, side // s, side // s, d * s * s])
    x = g.transpose(x, perm=[0, 2, 1, 3])
    return g.reshape(x, shape=[n, seq // (s * s), d * s * s])


def patch_positions(patch_mask: np.ndarray, grid: int) -> np.ndarray:
    """Position ids [N, h*w] of each tile's patches: the real patches' fractional coordinates bucketed
    onto the trained grid x grid table (HF Idefics3VisionEmbeddings), 0 for padding patches."""
    n, h, w = patch_mask.shape
    boundaries = np.arange(1 / grid, 1.0, 1 / grid, dtype=np.float32)
    out = np.zeros((n, h * w), np.int64)
    for i in range(n):
        rows, cols = int(patch_mask[i, :, 0].sum()), int(patch_mask[i, 0, :].sum())
        fh = np.minimum(np.arange(h, dtype=np.float32) * np.float32(1.0 / rows), np.float32(1 - 1e-6))
        fw = np.minimum(np.arange(w, dtype=np.float32) * np.float32(1.0 / cols), np.float32(1 - 1e-6))
        ids = (np.searchsorted(boundaries, fh, side="right")[:, None] * grid
               + np.searchsorted(boundaries, fw, side="right")[None, :]).reshape(-1)
        out[i] = np.where(patch_mask[i].reshape(-1), ids, 0)
    return out


# ---- checkpoint keys --------------------------------------------------------------------------

TEXT = "model.text_model."
KEYS = KeyTable("Idefics3/SmolVLM", siglip_layout("hf", "model.connector.modality_projection.proj.weight", extra={
    "model.layers.{i}.self_attn.qkv_proj.{kind}": Concat(*(f"{TEXT}layers.{{i}}.self_attn.{p}_proj.{{kind}}"
                                                          for p in "qkv")),
    "model.layers.{i}.mlp.gate_up_proj.{kind}": Concat(f"{TEXT}layers.{{i}}.mlp.gate_proj.{{kind}}",
                                                       f"{TEXT}layers.{{i}}.mlp.up_proj.{{kind}}"),
    "model.layers.{i}.{name}": TEXT + "layers.{i}.{name}",
    "model.embed_tokens.weight": TEXT + "embed_tokens.weight",
    "model.norm.weight": TEXT + "norm.weight",
}, ignore=("lm_head.weight",)))


# ---- the loaded model --------------------------------------------------------------------------

class SmolVLMForConditionalGeneration:
    """A loaded Idefics3 / SmolVLM: `model(input_ids, attention_mask, pixel_values, pixel_attention_mask)`
    -> {logits, image_hidden_states} and `generate(...)` as HF; `processor` (when the checkpoint has
    one) turns images and a prompt into those inputs."""

    def __init__(self, cfg: SmolVLMConfig, params: dict[str, np.ndarray], *, tokenizer=None, processor=None,
                 generation_config: GenerationConfig | None = None, device: str = "cpu", dtype: str = "float32",
                 name: str = "model"):
        self.config, self.device, self.dtype = cfg, device, as_dtype(dtype).name
        self.tokenizer, self.processor = tokenizer, processor
        self.decoder = CausalLM(LlamaGraphs(cfg.text, self.dtype), params, tokenizer=tokenizer,
                                generation_config=generation_config, device=device, dtype=self.dtype, name=name)
        self.params = params
        self._vision: dict[tuple, Any] = {}
        self.image_runs = 0   # vision-graph runs: once per prompt, however many tokens are generated

    @property
    def generation_config(self) -> GenerationConfig:
        return self.decoder.generation_config

    # ---- images -> features --------------------------------------------------------------------
    def get_image_features(self, pixel_values, pixel_attention_mask=None) -> np.ndarray:
        """Connector output [real tiles, tokens per tile, text hidden] (HF's image_hidden_states)."""
        px, mask = self._tiles(pixel_values, pixel_attention_mask)
        p = self.config.vision.patch_size
        n, _, h, w = px.shape
        patch_mask = mask.reshape(n, h // p, p, w // p, p).any(axis=(2, 4))
        positions = patch_positions(patch_mask, self.config.vision.grid)
        padded = not patch_mask.all()
        key = (px.shape, padded)
        if key not in self._vision:
            g = Graph(f"{self.config.model_type}_vision_{'x'.join(map(str, px.shape))}")
            pixels = g.input("pixel_values", px.shape, self.dtype)
            pos = g.input("position_ids", positions.shape, "int64")
            pm = g.input("patch_mask", positions.shape, "bool") if padded else None
            g.output("image_features", ImageEncoder(self.config, self.dtype)(g, pixels, pos, pm))
            cg = compile_graph(g, device=self.device)
            cg.load_params({k: v for k, v in self.params.items() if k in cg.param_types})
            self._vision[key] = cg
        feeds = {"pixel_values": px, "position_ids": positions}
        if padded:
            feeds["patch_mask"] = patch_mask.reshape(n, -1)
        self.image_runs += 1
        return self._vision[key].run(**feeds)["image_features"]

    def _tiles(self, pixel_values, pixel_attention_mask):
        """The real tiles [N, C, H, W] (all-zero padding tiles dropped, as HF) and their pixel masks [N, H, W]."""
        px = np.asarray(pixel_values)
        c = self.config.vision.num_channels
        if px.ndim == 4:
            px = px[None]
        if px.ndim != 5 or px.shape[2] != c:
            raise InputError(f"pixel_values must be [batch, images, {c}, height, width], got shape {px.shape}")
        if not np.issubdtype(px.dtype, np.floating):
            raise InputError(f"pixel_values must be a float array (normalized pixels), got dtype {px.dtype}")
        b, k, _, h, w = px.shape
        p = self.config.vision.patch_size
        if h % p or w % p:
            raise InputError(f"pixel_values of {h}x{w} are not a whole number of {p}x{p} patches")
        if h // p != self.config.vision.grid or w // p != self.config.vision.grid:
            raise InputError(f"pixel_values of {h}x{w} are not tiles of the vision encoder's "
                             f"{self.config.vision.image_size}x{self.config.vision.image_size}")
        flat = px.reshape(b * k, c, h, w)
        real = (flat != 0).any(axis=(1, 2, 3))
        real[0] |= not real.any()
        if pixel_attention_mask is None:
            mask = np.ones((b * k, h, w), bool)
        else:
            mask = np.asarray(pixel_attention_mask)
            if mask.shape not in ((b, k, h, w), (k, h, w)):
                raise InputError(f"pixel_attention_mask must be [batch, images, height, width] = {[b, k, h, w]}, "
                                 f"got shape {mask.shape}")
            mask = mask.reshape(b * k, h, w).astype(bool)
        return np.ascontiguousarray(flat[real], dtype=as_dtype(self.dtype).np_dtype), mask[real]

    def _features(self, ids: np.ndarray, pixel_values, pixel_attention_mask):
        """(inputs_embeds, embeds_mask) for the decoder: image features at the `<image>` tokens."""
        if pixel_values is None:
            return None
        feats = self.get_image_features(pixel_values, pixel_attention_mask)
        where = ids == self.config.image_token_id
        rows = feats.reshape(-1, feats.shape[-1])
        if int(where.sum()) != rows.shape[0]:
            raise InputError(f"the prompt has {int(where.sum())} image tokens (id {self.config.image_token_id}) but "
                             f"the images give {rows.shape[0]} features ({feats.shape[0]} tiles of "
                             f"{feats.shape[1]}); every tile needs its {feats.shape[1]} tokens in the prompt")
        embeds = np.zeros((*ids.shape, rows.shape[1]), rows.dtype)
        embeds[where] = rows
        return embeds, where, feats

    # ---- HF surface --------------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, pixel_values=None, pixel_attention_mask=None,
                 position_ids=None) -> dict[str, np.ndarray]:
        ids = self.decoder._ids("input_ids", input_ids)
        features = self._features(ids, pixel_values, pixel_attention_mask)
        out = {"logits": self.decoder(ids, attention_mask, position_ids,
                                      features=features[:2] if features else None)}
        if features is not None:
            out["image_hidden_states"] = features[2]
        return out

    def generate(self, input_ids, attention_mask=None, pixel_values=None, pixel_attention_mask=None,
                 **generate_kwargs):
        """Token ids [batch, prompt + new] as HF `generate`; the images are encoded once, before the prompt."""
        ids = self.decoder._ids("input_ids", input_ids)
        features = self._features(ids, pixel_values, pixel_attention_mask)
        return self.decoder.generate(ids, attention_mask, features=features[:2] if features else None,
                                     **generate_kwargs)

    def generate_text(self, prompt: str, images=(), *, video=None, max_new_tokens: int = 64, stream=None,
                      **generate_kwargs) -> str:
        """Images (paths or PIL images) or a video and a prompt in, the reply out (chat template applied)."""
        if self.processor is None or self.tokenizer is None:
            raise InputError(f"{self.decoder.name}: the checkpoint has no processor/tokenizer files "
                             f"(preprocessor_config.json, tokenizer.json); pass input_ids and pixel_values")
        inputs = self.processor.chat(prompt, images=list(images), video=video)
        from kiln.runtime.generation import TextStreamer

        streamer = None
        if stream is not None:
            streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, on_text=stream)
        out = self.generate(inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"),
                            inputs.get("pixel_attention_mask"), max_new_tokens=max_new_tokens, streamer=streamer,
                            **generate_kwargs)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


Idefics3ForConditionalGeneration = SmolVLMForConditionalGeneration


# ---- loading -------------------------------------------------------------------------------

def load_smolvlm(path, device: str = "cpu", dtype: str = "float32", **_options) -> SmolVLMForConditionalGeneration:
    """An Idefics3 / SmolVLM checkpoint directory (weights, tokenizer, processor, generation defaults)."""
    d = Path(path)
    raw = read_config(d)
    cfg = SmolVLMConfig.from_hf(raw)
    dtype = as_dtype(dtype).name
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    tied = not weights.has("lm_head.weight")
    cfg = replace(cfg, text=replace(cfg.text, tie_word_embeddings=tied))
    spec = {**Llama(cfg.text, dtype).params(), **ImageEncoder(cfg, dtype).params()}
    params = KEYS.load(weights, spec)
    tokenizer = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    processor = None
    if tokenizer is not None and any((d / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        from .smolvlm_processor import SmolVLMProcessor

        processor = SmolVLMProcessor.from_dir(d, tokenizer, cfg)
    return SmolVLMForConditionalGeneration(cfg, params, tokenizer=tokenizer, processor=processor,
                                           generation_config=GenerationConfig.from_dir(d, raw), device=device,
                                           dtype=dtype, name=str(d))
