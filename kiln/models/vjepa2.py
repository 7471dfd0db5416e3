"""V-JEPA 2 (HF `VJEPA2Model`, `VJEPA2ForVideoClassification`): a video ViT, its predictor, a classifier.

The encoder embeds 2-frame tubelets (a Conv3d whose stride is its kernel), then pre-norm blocks
whose attention rotates q/k by each token's (frame, row, column) (`kiln.nn.Rope3D`), then a
LayerNorm. The predictor maps the encoder's context tokens to its own width, appends one learned
mask token per target position, runs its blocks with the tokens' grid positions and projects the
target rows back to the encoder width. The classifier pools the encoder output with an attentive
pooler (self-attention blocks, then learned queries cross-attending) and a linear head.

Position ids follow the config's grid (crop_size / patch_size squared per frame) whatever the
input resolution, as HF computes them. HF sorts the predictor's tokens by position before its
blocks and unsorts them after; the blocks are permutation-equivariant, so kiln skips both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.errors import InputError
from kiln.io.config import check_divisible, config_bool, config_float, config_int, config_str, read_config
from kiln.io.errors import CheckpointError, ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, Value
from kiln.nn import (MLP, Attention, Concat, Conv, CrossAttention, KeyTable, LayerNorm, Layout, Linear, Module,
                     ParamSpec, Rope3D, TransformerBlock, Unsqueezed)
from kiln.nn.mlp import HF_ACTIVATIONS
from kiln.runtime.compiler import compile as compile_graph


@dataclass(frozen=True)
class VJEPA2Config:
    patch_size: int
    crop_size: int
    tubelet_size: int
    in_chans: int
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    mlp_ratio: float
    layer_norm_eps: float
    qkv_bias: bool
    hidden_act: str
    num_pooler_layers: int
    pred_hidden_size: int
    pred_num_attention_heads: int
    pred_num_hidden_layers: int
    pred_num_mask_tokens: int
    pred_mlp_ratio: float
    frames_per_clip: int = 64
    id2label: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict) -> "VJEPA2Config":
        size = lambda name, default: config_int(cfg, name, max=1 << 20, default=default)  # noqa: E731
        ratio = lambda name: config_float(cfg, name, min=0.0, min_exclusive=True, default=4.0)  # noqa: E731
        if isinstance(cfg.get("patch_size"), list):
            raise ConfigError(f"{getattr(cfg, 'path', 'config')}: field 'patch_size' must be one integer "
                              f"(square patches), found {cfg['patch_size']!r}")
        act = config_str(cfg, "hidden_act", choices=sorted(HF_ACTIVATIONS), default="gelu")
        labels = cfg.get("id2label") or {}
        if not isinstance(labels, dict) or not all(str(k).isdigit() for k in labels):
            raise ConfigError(f"{getattr(cfg, 'path', 'config')}: field 'id2label' must map class numbers to "
                              f"names, found {labels!r:.80}")
        c = cls(size("patch_size", 16), size("crop_size", 256), size("tubelet_size", 2), size("in_chans", 3),
                size("hidden_size", 1024), size("num_attention_heads", 16), size("num_hidden_layers", 24),
                ratio("mlp_ratio"), config_float(cfg, "layer_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
                config_bool(cfg, "qkv_bias", default=True), HF_ACTIVATIONS[act],
                config_int(cfg, "num_pooler_layers", min=0, max=1 << 10, default=3),
                size("pred_hidden_size", 384), size("pred_num_attention_heads", 12),
                size("pred_num_hidden_layers", 12), size("pred_num_mask_tokens", 10), ratio("pred_mlp_ratio"),
                size("frames_per_clip", 64), {int(k): str(v) for k, v in labels.items()})
        check_divisible(cfg, "hidden_size", c.hidden_size, "num_attention_heads", c.num_attention_heads)
        check_divisible(cfg, "pred_hidden_size", c.pred_hidden_size, "pred_num_attention_heads",
                        c.pred_num_attention_heads)
        return c

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns per frame that position ids count with (HF: crop_size // patch_size)."""
        return (self.crop_size // self.patch_size,) * 2


def vit_block(prefix: str, dim: int, heads: int, mlp_ratio: float, cfg: VJEPA2Config, rope: Rope3D | None,
              attn_name: str = "attention", norms=("norm1", "norm2"), names=None, dtype="float32"):
    """A pre-norm ViT block: LayerNorm, fused-QKV attention (optionally 3D-rotary), LayerNorm, MLP fc1/fc2."""
    eps = cfg.layer_norm_eps
    return TransformerBlock(
        LayerNorm(f"{prefix}.{norms[0]}", dim, eps, dtype=dtype),
        Attention(f"{prefix}.{attn_name}", dim, heads, qkv_bias=cfg.qkv_bias if rope else True, out_bias=True,
                  rope=rope, names=names or {"qkv": "qkv", "out": "proj"}, dtype=dtype),
        LayerNorm(f"{prefix}.{norms[1]}", dim, eps, dtype=dtype),
        MLP(f"{prefix}.mlp", dim, int(dim * mlp_ratio), cfg.hidden_act, bias=True,
            names={"up": "fc1", "down": "fc2"}, dtype=dtype))


class Encoder(Module):
    """Tubelet embedding, 3D-rotary ViT blocks, final LayerNorm: [B, T, C, H, W] -> [B, N, hidden]."""

    def __init__(self, cfg: VJEPA2Config, dtype="float32"):
        super().__init__("encoder", dtype)
        t, p, d = cfg.tubelet_size, cfg.patch_size, cfg.hidden_size
        self.patch = Conv("encoder.embeddings.patch_embeddings.proj", cfg.in_chans, d, (t, p, p), dims=3,
                          stride=(t, p, p), dtype=dtype)
        self.rope = Rope3D(d // cfg.num_attention_heads, cfg.grid, dtype=dtype)
        self.layers = [vit_block(f"encoder.layer.{i}", d, cfg.num_attention_heads, cfg.mlp_ratio, cfg, self.rope,
                                 dtype=dtype) for i in range(cfg.num_hidden_layers)]
        self.norm = LayerNorm("encoder.layernorm", d, cfg.layer_norm_eps, dtype=dtype)

    def __call__(self, g: Graph, pixels: Value) -> Value:
        x = self.patch(g, g.transpose(pixels, perm=[0, 2, 1, 3, 4]))   # [B, hidden, T', H', W']
        b, d = x.shape[:2]
        n = int(np.prod(x.shape[2:]))
        x = g.transpose(g.reshape(x, shape=[b, d, n]), perm=[0, 2, 1])
        tables = self.rope.tables(g, n)
        for block in self.layers:
            x = block(g, x, rope_tables=tables)
        return self.norm(g, x)


class Predictor(Module):
    """Context tokens (encoder rows at `context_ids`) plus a mask token per target id -> predicted targets."""

    def __init__(self, cfg: VJEPA2Config, dtype="float32"):
        super().__init__("predictor", dtype)
        d, p = cfg.hidden_size, cfg.pred_hidden_size
        self.num_mask_tokens, self.width = cfg.pred_num_mask_tokens, p
        self.embed = Linear("predictor.embeddings.predictor_embeddings", d, p, bias=True, dtype=dtype)
        self.rope = Rope3D(p // cfg.pred_num_attention_heads, cfg.grid, dtype=dtype)
        self.layers = [vit_block(f"predictor.layer.{i}", p, cfg.pred_num_attention_heads, cfg.pred_mlp_ratio, cfg,
                                 self.rope, dtype=dtype) for i in range(cfg.pred_num_hidden_layers)]
        self.norm = LayerNorm("predictor.layernorm", p, cfg.layer_norm_eps, dtype=dtype)
        self.proj = Linear("predictor.proj", p, d, bias=True, dtype=dtype)

    def own_params(self) -> dict[str, ParamSpec]:
        m = self.num_mask_tokens
        return {"embeddings.mask_tokens": ParamSpec((m, 1, self.width), self.dtype, parts=(1,) * m)}

    def __call__(self, g: Graph, encoded: Value, context: Value, context_ids: Value, target_ids: Value) -> Value:
        """encoded: the encoder output [B, N, hidden] (its row count bounds the ids); context: its rows at
        context_ids [B, Nc]; target_ids [B, Nt]. Returns [B, Nt, hidden]."""
        b, nc = context_ids.shape
        nt = target_ids.shape[1]
        which = 1 % self.num_mask_tokens   # HF's default mask_index
        token = g.slice(self.param(g, "embeddings.mask_tokens"), axes=[0], starts=[which], ends=[which + 1])
        x = g.concat(self.embed(g, context), g.broadcast_to(token, shape=[b, nt, self.width]), axis=1)
        tables = self.rope.tables(g, encoded.shape[1], g.concat(context_ids, target_ids, axis=1))
        for block in self.layers:
            x = block(g, x, rope_tables=tables)
        x = self.norm(g, x)
        return self.proj(g, g.slice(x, axes=[1], starts=[nc], ends=[nc + nt]))


POOLER_MLP_RATIO = 4.0   # HF's pooler MLPs keep VJEPA2MLP's default ratio, not config.mlp_ratio


class AttentivePooler(Module):
    """Self-attention blocks over the tokens, then one learned query cross-attends them: [B, N, D] -> [B, D]."""

    def __init__(self, cfg: VJEPA2Config, dtype="float32"):
        super().__init__("pooler", dtype)
        d, h, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
        self.dim = d
        self.blocks = [vit_block(f"pooler.self_attention_layers.{i}", d, h, POOLER_MLP_RATIO, cfg, None,
                                 attn_name="self_attn", norms=("layer_norm1", "layer_norm2"),
                                 names={"qkv": "qkv", "out": "out_proj"}, dtype=dtype)
                       for i in range(cfg.num_pooler_layers)]
        name = "pooler.cross_attention_layer"
        self.cross_norm = LayerNorm(f"{name}.layer_norm1", d, eps, dtype=dtype)
        self.cross = CrossAttention(f"{name}.cross_attn", d, h, out_proj=False, dtype=dtype)
        self.mlp_norm = LayerNorm(f"{name}.layer_norm2", d, eps, dtype=dtype)
        self.mlp = MLP(f"{name}.mlp", d, int(d * POOLER_MLP_RATIO), cfg.hidden_act, bias=True,
                       names={"up": "fc1", "down": "fc2"}, dtype=dtype)

    def own_params(self) -> dict[str, ParamSpec]:
        return {"query_tokens": ParamSpec((1, 1, self.dim), self.dtype)}

    def __call__(self, g: Graph, x: Value) -> Value:
        for block in self.blocks:
            x = block(g, x)
        b = x.shape[0]
        queries = g.broadcast_to(self.param(g, "query_tokens"), shape=[b, 1, self.dim])
        h = queries + self.cross(g, queries, *self.cross.memory(g, self.cross_norm(g, x)))
        h = h + self.mlp(g, self.mlp_norm(g, h))
        return g.reshape(h, shape=[b, self.dim])


class VJEPA2Modules(Module):
    """The blocks a checkpoint holds: the encoder, plus the predictor (when it has one) or the pooler and
    classifier (a VJEPA2ForVideoClassification checkpoint, whose stored predictor goes unused)."""

    def __init__(self, cfg: VJEPA2Config, classifier: bool, predictor: bool = True, dtype="float32"):
        super().__init__("", dtype)
        self.encoder = Encoder(cfg, dtype)
        self.predictor = Predictor(cfg, dtype) if predictor and not classifier else None
        self.pooler = AttentivePooler(cfg, dtype) if classifier else None
        self.classifier = Linear("classifier", cfg.hidden_size, len(cfg.id2label), bias=True,
                                 dtype=dtype) if classifier else None


def gather_rows(g: Graph, x: Value, ids: Value) -> Value:
    """x [B, N, D] at rows ids [B, n] -> [B, n, D]."""
    b, n = ids.shape
    return g.take_along_axis(x, g.reshape(ids, shape=[b, n, 1]), axis=1)


def build_vjepa2_graph(modules: VJEPA2Modules, shape: tuple[int, ...], masks: tuple[int, int] | None = None,
                       dtype="float32") -> Graph:
    """One static shape: pixel_values_videos [B, T, C, H, W] (float32) -> last_hidden_state, and with
    masks = (context, target) counts the masked/target encoder rows and the predictor's output; a
    classifier's graph returns logits."""
    g = Graph("vjepa2_" + "x".join(map(str, shape)) + (f"_m{masks[0]}_{masks[1]}" if masks else ""))
    pixels = g.input("pixel_values_videos", shape, "float32")
    if dtype != "float32":
        pixels = g.cast(pixels, dtype=dtype)
    x = modules.encoder(g, pixels)
    if modules.classifier is not None:
        g.output("logits", modules.classifier(g, modules.pooler(g, x)))
        return g
    g.output("last_hidden_state", x)
    if masks is not None:
        b = shape[0]
        ctx_ids = g.input("context_mask", (b, masks[0]), "int64")
        tgt_ids = g.input("target_mask", (b, masks[1]), "int64")
        context = gather_rows(g, x, ctx_ids)
        g.output("masked_hidden_state", context)
        g.output("target_hidden_state", gather_rows(g, x, tgt_ids))
        g.output("predictor_last_hidden_state", modules.predictor(g, x, context, ctx_ids, tgt_ids))
    return g


def _attn_keys(src: str, dst: str, q="query", k="key", v="value") -> dict:
    return {f"{dst}.qkv.{{kind}}": Concat(*(f"{src}.{p}.{{kind}}" for p in (q, k, v)))}


HF_LAYOUT = Layout("hf", "encoder.embeddings.patch_embeddings.proj.weight", strip=("vjepa2.",), keys={
    **_attn_keys("encoder.layer.{i}.attention", "encoder.layer.{i}.attention"),
    **_attn_keys("predictor.layer.{i}.attention", "predictor.layer.{i}.attention"),
    **_attn_keys("pooler.self_attention_layers.{i}.self_attn", "pooler.self_attention_layers.{i}.self_attn",
                 "q_proj", "k_proj", "v_proj"),
    "pooler.cross_attention_layer.cross_attn.kv_proj.{kind}": Concat(
        *(f"pooler.cross_attention_layer.cross_attn.{p}_proj.{{kind}}" for p in "kv")),
    "predictor.embeddings.mask_tokens": Unsqueezed("predictor.embeddings.mask_tokens", axis=1),
    "{name}": "{name}",
}, ignore=("predictor.*",))

# The original (Meta) names, as HF's conversion scripts map them: fused qkv, `blocks`, `norm`, ...
ORIGINAL_LAYOUT = Layout("original", "patch_embed.proj.weight", strip=("module.backbone.",), keys={
    "encoder.embeddings.patch_embeddings.proj.{kind}": "patch_embed.proj.{kind}",
    "encoder.layer.{i}.attention.{name}": "blocks.{i}.attn.{name}",
    "encoder.layer.{i}.{name}": "blocks.{i}.{name}",
    "encoder.layernorm.{kind}": "norm.{kind}",
    "predictor.embeddings.predictor_embeddings.{kind}": "predictor_embed.{kind}",
    "predictor.embeddings.mask_tokens": Concat("mask_tokens.{j}", each="j"),
    "predictor.layer.{i}.attention.{name}": "predictor_blocks.{i}.attn.{name}",
    "predictor.layer.{i}.{name}": "predictor_blocks.{i}.{name}",
    "predictor.layernorm.{kind}": "predictor_norm.{kind}",
    "predictor.proj.{kind}": "predictor_proj.{kind}",
    "pooler.query_tokens": "pooler.query_tokens",
    "pooler.cross_attention_layer.layer_norm{n}.{kind}": "pooler.cross_attention_block.norm{n}.{kind}",
    "pooler.cross_attention_layer.cross_attn.q_proj.{kind}": "pooler.cross_attention_block.xattn.q.{kind}",
    "pooler.cross_attention_layer.cross_attn.kv_proj.{kind}": "pooler.cross_attention_block.xattn.kv.{kind}",
    "pooler.cross_attention_layer.mlp.{name}": "pooler.cross_attention_block.mlp.{name}",
    "pooler.self_attention_layers.{i}.layer_norm{n}.{kind}": "pooler.blocks.{i}.norm{n}.{kind}",
    "pooler.self_attention_layers.{i}.self_attn.qkv.{kind}": "pooler.blocks.{i}.attn.qkv.{kind}",
    "pooler.self_attention_layers.{i}.self_attn.out_proj.{kind}": "pooler.blocks.{i}.attn.proj.{kind}",
    "pooler.self_attention_layers.{i}.mlp.{name}": "pooler.blocks.{i}.mlp.{name}",
    "classifier.{kind}": "linear.{kind}",
}, ignore=("predictor_*", "mask_tokens.*"))

KEYS = KeyTable("V-JEPA 2", HF_LAYOUT, ORIGINAL_LAYOUT)
CLASSIFIER_MARKERS = {"hf": "classifier.weight", "original": "linear.weight"}
PREDICTOR_MARKERS = {"hf": "predictor.embeddings.predictor_embeddings.weight", "original": "predictor_embed.weight"}


def vjepa2_params(weights: WeightMap, cfg: VJEPA2Config, dtype="float32") -> tuple[dict, VJEPA2Modules, str]:
    """(parameters, the blocks they belong to, the layout name): a classifier when the checkpoint has a head,
    and the predictor when it has one (the original encoder checkpoints come without)."""
    layout, w = KEYS.detect(weights)
    classifier = w.has(CLASSIFIER_MARKERS[layout.name])
    if classifier and not cfg.id2label:
        raise ConfigError(f"{weights.source}: a V-JEPA 2 classifier checkpoint needs id2label in config.json")
    modules = VJEPA2Modules(cfg, classifier, w.has(PREDICTOR_MARKERS[layout.name]), dtype)
    try:
        params = KEYS.load(weights, modules.params())
    except CheckpointError as e:
        raise CheckpointError(f"{e} (V-JEPA 2 checkpoint, {layout.name} layout detected)") from None
    return params, modules, layout.name


class VJEPA2Model:
    """A loaded V-JEPA 2: `model(pixel_values_videos=...)` like HF (the encoder; the predictor too when
    context_mask and target_mask are given), or logits for a `VJEPA2ForVideoClassification` checkpoint."""

    def __init__(self, cfg: VJEPA2Config, params: dict, modules: VJEPA2Modules, layout: str, device="cpu",
                 dtype="float32"):
        self.config, self.params, self.modules, self.layout = cfg, params, modules, layout
        self.device, self.dtype = device, dtype
        self.is_classifier = modules.classifier is not None
        self._compiled: dict[tuple, object] = {}

    def _graph_for(self, shape: tuple[int, ...], masks: tuple[int, int] | None):
        key = (shape, masks)
        if key not in self._compiled:
            g = build_vjepa2_graph(self.modules, shape, masks, self.dtype)
            cg = compile_graph(g, device=self.device)
            cg.load_params({k: v for k, v in self.params.items() if k in g.parameters})
            self._compiled[key] = cg
        return self._compiled[key]

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        p = self.config.patch_size
        return frames // self.config.tubelet_size * (height // p) * (width // p)

    def __call__(self, pixel_values_videos, context_mask=None, target_mask=None) -> dict:
        """pixel_values_videos float32 [B, T, C, H, W] (T a multiple of tubelet_size, H and W of patch_size).
        context_mask / target_mask: token ids [B, n] (or a list holding one such array, as HF takes them)."""
        pixels = self._check_pixels(pixel_values_videos)
        if self.is_classifier:
            if context_mask is not None or target_mask is not None:
                raise InputError("a V-JEPA 2 classifier takes no context_mask / target_mask")
            return self._graph_for(pixels.shape, None).run(pixel_values_videos=pixels)
        if (context_mask is None) != (target_mask is None):
            raise InputError("give both context_mask and target_mask (the predictor needs both), or neither")
        if context_mask is None:
            return self._graph_for(pixels.shape, None).run(pixel_values_videos=pixels)
        if self.modules.predictor is None:
            raise InputError("this V-JEPA 2 checkpoint has no predictor weights, so it takes no context_mask / "
                             "target_mask")
        n = self.num_tokens(pixels.shape[1], pixels.shape[3], pixels.shape[4])
        ctx, tgt = (_check_mask(name, m, pixels.shape[0], n) for name, m in
                    (("context_mask", context_mask), ("target_mask", target_mask)))
        out = self._graph_for(pixels.shape, (ctx.shape[1], tgt.shape[1])).run(
            pixel_values_videos=pixels, context_mask=ctx, target_mask=tgt)
        return {"last_hidden_state": out["last_hidden_state"], "masked_hidden_state": out["masked_hidden_state"],
                "predictor_output": {"last_hidden_state": out["predictor_last_hidden_state"],
                                     "target_hidden_state": out["target_hidden_state"]}}

    def _check_pixels(self, pixel_values_videos) -> np.ndarray:
        x = np.asarray(pixel_values_videos)
        c = self.config
        if x.ndim != 5:
            raise InputError(f"pixel_values_videos must be [batch, frames, channels, height, width], got shape "
                             f"{x.shape}")
        if x.dtype != np.float32:
            raise InputError(f"pixel_values_videos must be float32 (the video processor's output), got {x.dtype}")
        b, t, ch, h, w = x.shape
        if t < c.tubelet_size or t % c.tubelet_size:
            raise InputError(f"pixel_values_videos has {t} frames; V-JEPA 2 embeds tubelets of {c.tubelet_size} "
                             f"frames, so it needs a positive multiple of {c.tubelet_size} frames")
        if ch != c.in_chans:
            raise InputError(f"pixel_values_videos has {ch} channels, expected {c.in_chans}")
        if h % c.patch_size or w % c.patch_size or h == 0 or w == 0:
            raise InputError(f"frames of {h}x{w} pixels do not divide into {c.patch_size}x{c.patch_size} patches")
        if b == 0:
            raise InputError("pixel_values_videos has an empty batch")
        return x


def _check_mask(name: str, mask, batch: int, tokens: int) -> np.ndarray:
    """A [batch, n] int64 array of token ids in [0, tokens) (a list of one array is HF's form)."""
    if isinstance(mask, (list, tuple)):
        if len(mask) != 1:
            raise InputError(f"{name}: kiln's V-JEPA 2 predictor takes one mask, got a list of {len(mask)}")
        mask = mask[0]
    m = np.asarray(mask)
    if not np.issubdtype(m.dtype, np.integer):
        raise InputError(f"{name} must hold integer token ids, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != batch or m.shape[1] == 0:
        raise InputError(f"{name} must be [batch={batch}, n >= 1] token ids, got shape {m.shape}")
    if m.min() < 0 or m.max() >= tokens:
        raise InputError(f"{name} ids must be in [0, {tokens}) (the clip's tokens), got [{m.min()}, {m.max()}]")
    return m.astype(np.int64, copy=False)


def load_vjepa2(path, device: str = "cpu", dtype: str = "float32") -> VJEPA2Model:
    d = Path(path)
    cfg = VJEPA2Config.from_dict(read_config(d))
    params, modules, layout = vjepa2_params(WeightMap(load_checkpoint_dir(d), source=str(d)), cfg, dtype)
    return VJEPA2Model(cfg, params, modules, layout, device, dtype)
