"""Gemma 4 unified (model_type gemma4_unified): an encoder-free multimodal Gemma 4.

There is no vision or audio tower. An image arrives as merged pixel patches (each
(patch_size * pooling_kernel_size)^2 * 3 raw values) with their (x, y) grid positions; the vision
embedder maps them to soft tokens: LayerNorm -> Dense -> LayerNorm -> + a factorized 2-D position
table -> LayerNorm -> scale-free RMSNorm -> projection to the text width. Audio arrives as raw
waveform frames (audio_embed_dim samples each): scale-free RMSNorm -> projection. The soft tokens
are written at the image / audio placeholder tokens of the prompt (kiln.nn.features) and the
Gemma 4 text stack (kiln.models.gemma4) runs with the tokens of each image attending to each other
both ways in the prompt (HF's forward/generate: an image block overrides causality and the window
on every layer).

Checkpoints store the vision embedder under `model.vision_embedder.*` and its projection as
`model.embed_vision.embedding_projection.weight` (what save_pretrained writes); HF's module names
(`model.embed_vision.patch_ln1`, `...multimodal_embedder.embedding_projection`) load too. The
layout found is logged and kept in `model.layout`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.errors import InputError
from kiln.io.config import ModelConfig, config_float, config_int, read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, Value, as_dtype
from kiln.nn import KeyTable, LayerNorm, Layout, Linear, Module, ParamSpec, RMSNorm
from kiln.runtime.compiler import compile as compile_graph
from kiln.runtime.generation import GenerationConfig

from .gemma4 import Gemma4Graphs, Gemma4LM, Gemma4Text, Gemma4TextConfig, text_layout

log = logging.getLogger("kiln")
TEXT_PREFIX = "model.language_model."
TOKEN_FIELDS = ("image_token_id", "audio_token_id", "video_token_id", "boi_token_id", "eoi_token_id",
                "boa_token_id", "eoa_token_index")


@dataclass(frozen=True)
class VisionConfig:
    patch_size: int
    pooling_kernel_size: int
    mm_embed_dim: int
    mm_posemb_size: int
    output_proj_dims: int
    rms_norm_eps: float = 1e-6

    @property
    def patch_pixels(self) -> int:
        """Raw values per merged patch: (patch_size * pooling_kernel_size)^2 * 3."""
        return (self.patch_size * self.pooling_kernel_size) ** 2 * 3


@dataclass(frozen=True)
class UnifiedConfig:
    text: Gemma4TextConfig
    vision: VisionConfig | None
    audio_dim: int | None                  # audio_embed_dim (samples per audio token); None: no audio
    audio_eps: float
    tokens: dict

    @classmethod
    def from_hf(cls, raw: ModelConfig) -> "UnifiedConfig":
        where = raw.path

        def sub(name):
            s = raw.get(name)
            if s is None:
                return None
            if not isinstance(s, dict):
                raise ConfigError(f"{where}: {name} must be an object, found {type(s).__name__}")
            c = ModelConfig(s)
            c.path = f"{where}: {name}"
            return c

        text = sub("text_config")
        if text is None:
            raise ConfigError(f"{where}: a gemma4_unified config needs a text_config")
        v, a = sub("vision_config"), sub("audio_config")
        vision = None if v is None else VisionConfig(
            patch_size=config_int(v, "patch_size", default=16),
            pooling_kernel_size=config_int(v, "pooling_kernel_size", default=3),
            mm_embed_dim=config_int(v, "mm_embed_dim", default=3840),
            mm_posemb_size=config_int(v, "mm_posemb_size", default=1120),
            output_proj_dims=config_int(v, "output_proj_dims", default=3840),
            rms_norm_eps=config_float(v, "rms_norm_eps", min=0.0, min_exclusive=True, default=1e-6))
        if vision is not None and vision.output_proj_dims != vision.mm_embed_dim:
            raise ConfigError(f"{where}: vision_config.output_proj_dims ({vision.output_proj_dims}) must equal "
                              f"mm_embed_dim ({vision.mm_embed_dim}): the projection reads the embedder's output")
        defaults = dict(image_token_id=258880, audio_token_id=258881, video_token_id=258884, boi_token_id=255999,
                        eoi_token_id=258882, boa_token_id=256000, eoa_token_index=258883)
        return cls(text=Gemma4TextConfig.from_hf(text), vision=vision,
                   audio_dim=None if a is None else config_int(a, "audio_embed_dim", default=640),
                   audio_eps=1e-6 if a is None else config_float(a, "rms_norm_eps", min=0.0, min_exclusive=True,
                                                                 default=1e-6),
                   tokens={k: config_int(raw, k, min=0, default=d) for k, d in defaults.items()})


# ---- the embedders ------------------------------------------------------------------------------

class SoftTokenProjection(Module):
    """Scale-free RMSNorm, then a bias-free projection to the text width (HF's multimodal embedder)."""

    def __init__(self, name: str, dim: int, out: int, eps: float, dtype: str):
        super().__init__(name, dtype)
        self.norm = RMSNorm(f"{name}.embedding_pre_projection_norm", dim, eps, scale=False, dtype=dtype)
        self.proj = Linear(f"{name}.embedding_projection", dim, out, dtype=dtype)

    def __call__(self, g: Graph, x: Value) -> Value:
        return self.proj(g, self.norm(g, x))


class FactorizedPositions(Module):
    """table [M, 2, D]: a patch at (x, y) adds table[x, 0] + table[y, 1]; a padding patch (-1) adds nothing."""

    def __init__(self, name: str, size: int, dim: int, dtype: str):
        super().__init__(name, dtype)
        self.size, self.dim = size, dim

    def own_params(self) -> dict[str, ParamSpec]:
        return {"pos_embedding": ParamSpec((self.size, 2, self.dim), self.dtype)}

    def __call__(self, g: Graph, positions: Value) -> Value:
        n, p, _ = positions.shape
        table = self.param(g, "pos_embedding")
        out = None
        for axis in (0, 1):
            ids = g.reshape(g.slice(positions, axes=[2], starts=[axis], ends=[axis + 1]), shape=[n, p])
            column = g.reshape(g.slice(table, axes=[1], starts=[axis], ends=[axis + 1]), shape=[self.size, self.dim])
            valid = g.not_equal(ids, g.scalar(-1, "int64"))
            rows = g.embedding(g.where(valid, ids, g.scalar(0, "int64")), column)
            rows = rows * g.reshape(g.cast(valid, dtype=self.dtype), shape=[n, p, 1])
            out = rows if out is None else out + rows
        return out


class VisionEmbedder(Module):
    """Merged pixel patches [N, P, patch_pixels] at positions [N, P, 2] -> soft tokens [N, P, text hidden]."""

    def __init__(self, cfg: VisionConfig, text_hidden: int, dtype: str, prefix: str = "model.vision_embedder"):
        super().__init__("", dtype)
        d = cfg.mm_embed_dim
        self.ln1 = LayerNorm(f"{prefix}.patch_ln1", cfg.patch_pixels, dtype=dtype)
        self.dense = Linear(f"{prefix}.patch_dense", cfg.patch_pixels, d, bias=True, dtype=dtype)
        self.ln2 = LayerNorm(f"{prefix}.patch_ln2", d, dtype=dtype)
        self.positions = FactorizedPositions(prefix, cfg.mm_posemb_size, d, dtype)
        self.pos_norm = LayerNorm(f"{prefix}.pos_norm", d, dtype=dtype)
        self.project = SoftTokenProjection("model.embed_vision", cfg.output_proj_dims, text_hidden, cfg.rms_norm_eps,
                                           dtype)

    def __call__(self, g: Graph, pixels: Value, positions: Value) -> Value:
        x = self.ln2(g, self.dense(g, self.ln1(g, pixels)))
        x = self.pos_norm(g, x + self.positions(g, positions))
        return self.project(g, x)


def vision_graph(cfg: UnifiedConfig, images: int, patches: int, dtype: str) -> Graph:
    g = Graph(f"gemma4_unified_vision_n{images}_p{patches}")
    px = g.input("pixel_values", (images, patches, cfg.vision.patch_pixels), dtype)
    pos = g.input("image_position_ids", (images, patches, 2), "int64")
    g.output("soft_tokens", VisionEmbedder(cfg.vision, cfg.text.hidden_size, dtype)(g, px, pos))
    return g


def audio_embedder(cfg: UnifiedConfig, dtype: str) -> SoftTokenProjection:
    return SoftTokenProjection("model.embed_audio", cfg.audio_dim, cfg.text.hidden_size, cfg.audio_eps, dtype)


def audio_graph(cfg: UnifiedConfig, clips: int, frames: int, dtype: str) -> Graph:
    g = Graph(f"gemma4_unified_audio_n{clips}_t{frames}")
    x = g.input("input_features", (clips, frames, cfg.audio_dim), dtype)
    g.output("soft_tokens", audio_embedder(cfg, dtype)(g, x))
    return g


class UnifiedSpec(Module):
    """Every parameter of the model: text stack and the embedders the config has."""

    def __init__(self, cfg: UnifiedConfig, dtype: str):
        super().__init__("", dtype)
        self.text = Gemma4Text(cfg.text, dtype, TEXT_PREFIX)
        self.vision = VisionEmbedder(cfg.vision, cfg.text.hidden_size, dtype) if cfg.vision else None
        self.audio = audio_embedder(cfg, dtype) if cfg.audio_dim else None


# ---- checkpoint keys --------------------------------------------------------------------------

def unified_keys() -> KeyTable:
    text = dict(text_layout(TEXT_PREFIX).keys)
    catch_all = {"{name}": text.pop("{name}")}
    return KeyTable(
        "Gemma 4 unified",
        Layout("unified (model.vision_embedder.*, model.embed_vision.embedding_projection)",
               "model.vision_embedder.patch_dense.weight", keys={**text, **catch_all}, ignore=("lm_head.weight",)),
        Layout("unified, HF module names (model.embed_vision.patch_*)", "model.embed_vision.patch_dense.weight", keys={
            **text, "model.vision_embedder.{name}": "model.embed_vision.{name}",
            "model.embed_vision.embedding_projection.weight":
                "model.embed_vision.multimodal_embedder.embedding_projection.weight", **catch_all},
            ignore=("lm_head.weight",)),
        Layout("unified without a vision embedder", f"{TEXT_PREFIX}embed_tokens.weight", keys={**text, **catch_all},
               ignore=("lm_head.weight",)))


# ---- the model ------------------------------------------------------------------------------------

def block_ids(mm_token_type_ids: np.ndarray) -> np.ndarray:
    """[B, S] int64: each run of image/video tokens (types 1, 2) numbered 0, 1, ... per row; -1 elsewhere."""
    vision = (mm_token_type_ids == 1) | (mm_token_type_ids == 2)
    starts = vision & ~np.concatenate([np.zeros_like(vision[:, :1]), vision[:, :-1]], axis=1)
    return np.where(vision, np.cumsum(starts, axis=1) - 1, -1).astype(np.int64)


class Gemma4UnifiedModel:
    """`model(input_ids, pixel_values=..., image_position_ids=..., input_features=..., ...)` -> logits and
    `generate(...)`, with HF's input names; `get_image_features` / `get_audio_features` run the embedders."""

    def __init__(self, cfg: UnifiedConfig, lm: Gemma4LM, layout: str, *, device: str, dtype: str, optimize: bool):
        self.config, self.lm, self.layout = cfg, lm, layout
        self.device, self.dtype, self.optimize = device, as_dtype(dtype).name, optimize
        self.tokenizer = lm.tokenizer
        self._compiled: dict[tuple, object] = {}

    @property
    def graphs(self):
        """The text stack's graphs, prefill with features by default (what `kiln inspect` shows)."""
        return _WithFeatures(self.lm.graphs)

    def _run(self, key: tuple, build, **feeds) -> np.ndarray:
        if key not in self._compiled:
            g = build()
            cg = compile_graph(g, device=self.device, optimize=self.optimize)
            cg.load_params({k: self.lm.params[k] for k in g.parameters})
            self._compiled[key] = cg
        return self._compiled[key].run(**feeds)["soft_tokens"]

    def get_image_features(self, pixel_values, image_position_ids) -> np.ndarray:
        """Soft tokens [images, patches, hidden] of merged patches (padding patches included)."""
        if self.config.vision is None:
            raise InputError("this Gemma 4 unified checkpoint has no vision embedder (no vision_config)")
        px, pos = np.asarray(pixel_values), np.asarray(image_position_ids)
        want = self.config.vision.patch_pixels
        if px.ndim != 3 or px.shape[2] != want or not np.issubdtype(px.dtype, np.floating):
            raise InputError(f"pixel_values must be a float array [images, patches, {want}], got {px.dtype} "
                             f"{px.shape}")
        if pos.shape != px.shape[:2] + (2,) or not np.issubdtype(pos.dtype, np.integer):
            raise InputError(f"image_position_ids must be an integer array [images, patches, 2] = "
                             f"{[*px.shape[:2], 2]}, got {pos.dtype} {pos.shape}")
        limit = self.config.vision.mm_posemb_size
        if pos.max(initial=-1) >= limit or pos.min(initial=0) < -1:
            raise InputError(f"image_position_ids must be in [0, {limit}) or -1 (padding), got "
                             f"[{pos.min()}, {pos.max()}]")
        n, p, _ = px.shape
        return self._run(("vision", n, p), lambda: vision_graph(self.config, n, p, self.dtype),
                         pixel_values=px.astype(as_dtype(self.dtype).np_dtype), image_position_ids=pos.astype(np.int64))

    def get_audio_features(self, input_features) -> np.ndarray:
        """Soft tokens [clips, frames, hidden] of raw waveform frames [clips, frames, audio_embed_dim]."""
        if self.config.audio_dim is None:
            raise InputError("this Gemma 4 unified checkpoint has no audio embedder (no audio_config)")
        x = np.asarray(input_features)
        if x.ndim != 3 or x.shape[2] != self.config.audio_dim or not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"input_features must be a float array [clips, frames, {self.config.audio_dim}], "
                             f"got {x.dtype} {x.shape}")
        n, t, _ = x.shape
        return self._run(("audio", n, t), lambda: audio_graph(self.config, n, t, self.dtype),
                         input_features=x.astype(as_dtype(self.dtype).np_dtype))

    def features(self, input_ids, pixel_values=None, image_position_ids=None, input_features=None,
                 input_features_mask=None, mm_token_type_ids=None):
        """(input_ids, (inputs_embeds, embeds_mask, block_ids)) for the text stack: the soft tokens at their
        placeholders (the placeholder ids stay: their embedding rows are replaced, and HF infers a missing
        attention mask from them)."""
        ids = self.lm._ids("input_ids", input_ids)
        tok = self.config.tokens
        embeds = np.zeros(ids.shape + (self.config.text.hidden_size,), as_dtype(self.dtype).np_dtype)
        where = np.zeros(ids.shape, bool)
        for kind, token, rows in (("image", tok["image_token_id"], self._image_rows(pixel_values, image_position_ids)),
                                  ("audio", tok["audio_token_id"], self._audio_rows(input_features,
                                                                                    input_features_mask))):
            at = ids == token
            count = 0 if rows is None else len(rows)
            if int(at.sum()) != count:
                raise InputError(f"the prompt has {int(at.sum())} {kind} tokens (id {token}) but the {kind} "
                                 f"inputs give {count} soft tokens; they must match")
            if count:
                embeds[at] = rows
                where |= at
        if (ids == tok["video_token_id"]).any():
            raise InputError(f"video tokens (id {tok['video_token_id']}) are not supported by kiln's Gemma 4 unified")
        blocks = None
        if mm_token_type_ids is not None:
            types = np.asarray(mm_token_type_ids)
            if types.shape != ids.shape:
                raise InputError(f"mm_token_type_ids has shape {types.shape}, expected input_ids' {ids.shape}")
            blocks = block_ids(types)
        return ids, (embeds, where, blocks)

    def _image_rows(self, pixel_values, image_position_ids):
        if pixel_values is None:
            return None
        if image_position_ids is None:
            raise InputError("pixel_values need image_position_ids (the processor's patch positions)")
        soft = self.get_image_features(pixel_values, image_position_ids)
        return soft[(np.asarray(image_position_ids) != -1).all(-1)]

    def _audio_rows(self, input_features, input_features_mask):
        if input_features is None:
            return None
        if input_features_mask is None:
            raise InputError("input_features need input_features_mask (True at real audio frames)")
        soft = self.get_audio_features(input_features)
        keep = np.asarray(input_features_mask)
        if keep.shape != soft.shape[:2] or keep.dtype != np.bool_:
            raise InputError(f"input_features_mask must be a bool array [clips, frames] = {list(soft.shape[:2])}, "
                             f"got {keep.dtype} {keep.shape}")
        return soft[keep]

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_position_ids=None,
                 input_features=None, input_features_mask=None, mm_token_type_ids=None, position_ids=None):
        """Logits [batch, seq, vocab] float32, as HF's forward."""
        ids, feats = self.features(input_ids, pixel_values, image_position_ids, input_features, input_features_mask,
                                   mm_token_type_ids)
        return self.lm(ids, attention_mask, position_ids, features=feats)

    def generate(self, input_ids, attention_mask=None, *, pixel_values=None, image_position_ids=None,
                 input_features=None, input_features_mask=None, mm_token_type_ids=None, **generate_kwargs):
        """Token ids [batch, prompt + new], as HF generate; `generate_kwargs` as CausalLM.generate."""
        ids, feats = self.features(input_ids, pixel_values, image_position_ids, input_features, input_features_mask,
                                   mm_token_type_ids)
        return self.lm.generate(ids, attention_mask, features=feats, **generate_kwargs)


class _WithFeatures:
    def __init__(self, graphs: Gemma4Graphs):
        self.inner = graphs

    def prefill_graph(self, batch: int, seq: int, last_only: bool = False, cache_len: int | None = None,
                      features: bool = True) -> Graph:
        return self.inner.prefill_graph(batch, seq, last_only, cache_len, features)

    def decode_graph(self, batch: int, max_len: int) -> Graph:
        return self.inner.decode_graph(batch, max_len)


def load_gemma4_unified(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
                        progress: bool = False) -> Gemma4UnifiedModel:
    d = Path(path)
    raw = read_config(d)
    cfg = UnifiedConfig.from_hf(raw)
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    keys = unified_keys()
    layout, _ = keys.detect(weights)
    log.info("%s: Gemma 4 unified checkpoint, layout: %s", d, layout.name)
    params = keys.load(weights, UnifiedSpec(cfg, dtype).params(), layers=range(cfg.text.num_hidden_layers))
    tokenizer = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    # HF's unified forward: an image block is bidirectional on every layer
    lm = Gemma4LM(Gemma4Graphs(cfg.text, dtype, TEXT_PREFIX, block_layers="all"), params, tokenizer=tokenizer,
                  generation_config=GenerationConfig.from_dir(d, {**raw["text_config"], **raw}), device=device,
                  dtype=dtype, optimize=optimize, name=str(d))
    return Gemma4UnifiedModel(cfg, lm, layout.name, device=device, dtype=dtype, optimize=optimize)
