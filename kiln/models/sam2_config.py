"""SAM 2's config.json (HF `Sam2Config`: vision_config.backbone_config, prompt_encoder_config,
mask_decoder_config), read through the validated accessors into one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kiln.io.config import ModelConfig, check_divisible, config_bool, config_float, config_int, config_str
from kiln.io.errors import ConfigError
from kiln.nn.mlp import HF_ACTIVATIONS


def _section(cfg: Mapping[str, Any], name: str) -> ModelConfig:
    """A nested config object as a ModelConfig whose path names it in errors."""
    sub = cfg.get(name)
    if sub is None:
        sub = {}
    if not isinstance(sub, dict):
        raise ConfigError(f"{getattr(cfg, 'path', 'config')}: field {name!r} must be an object, got {sub!r:.60}")
    out = ModelConfig(sub)
    out.path = f"{getattr(cfg, 'path', 'config')} [{name}]"
    return out


def _ints(cfg: Mapping[str, Any], name: str, default: list, length: int | None = None, min: int = 1) -> tuple:
    """A list of integers (>= min), of `length` items when given; a bare integer means [n, n]."""
    v = cfg.get(name)
    v = default if v is None else v
    if isinstance(v, int) and not isinstance(v, bool) and length == 2:
        v = [v, v]
    where = f"{getattr(cfg, 'path', 'config')}: field {name!r}"
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ConfigError(f"{where} must be a list of integers, got {v!r:.80}")
    if length is not None and len(v) != length:
        raise ConfigError(f"{where} must list {length} integers, got {list(v)}")
    if any(x < min for x in v):
        raise ConfigError(f"{where} must hold integers >= {min}, got {list(v)}")
    return tuple(v)


def _act(cfg, default="gelu") -> str:
    return HF_ACTIVATIONS[config_str(cfg, "hidden_act", choices=sorted(HF_ACTIVATIONS), default=default)]


@dataclass(frozen=True)
class Sam2Config:
    # Hiera backbone
    image_size: int
    num_channels: int
    hidden_size: int
    patch_kernel_size: tuple[int, int]
    patch_stride: tuple[int, int]
    patch_padding: tuple[int, int]
    query_stride: tuple[int, int]
    pos_embed_background: tuple[int, int]
    num_query_pool_stages: int
    blocks_per_stage: tuple[int, ...]
    embed_dim_per_stage: tuple[int, ...]
    heads_per_stage: tuple[int, ...]
    window_size_per_stage: tuple[int, ...]
    global_attention_blocks: tuple[int, ...]
    mlp_ratio: float
    backbone_act: str
    backbone_eps: float
    # FPN neck
    backbone_channel_list: tuple[int, ...]
    backbone_feature_sizes: tuple[tuple[int, int], ...]
    fpn_hidden_size: int
    fpn_kernel_size: int
    fpn_stride: int
    fpn_padding: int
    fpn_top_down_levels: tuple[int, ...]
    num_feature_levels: int
    # prompt encoder
    prompt_hidden_size: int
    prompt_image_size: int
    patch_size: int
    mask_input_channels: int
    num_point_embeddings: int
    prompt_act: str
    prompt_eps: float
    # mask decoder
    decoder_hidden_size: int
    decoder_act: str
    mlp_dim: int
    decoder_layers: int
    decoder_heads: int
    attention_downsample_rate: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int
    dynamic_multimask_via_stability: bool
    stability_delta: float
    stability_thresh: float

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "Sam2Config":
        vis = _section(cfg, "vision_config")
        bb = _section(vis, "backbone_config")
        pe = _section(cfg, "prompt_encoder_config")
        md = _section(cfg, "mask_decoder_config")
        stages = _ints(bb, "blocks_per_stage", [1, 2, 7, 2])
        n = len(stages)
        image = _ints(bb, "image_size", [1024, 1024], length=2)
        if image[0] != image[1]:
            raise ConfigError(f"{bb.path}: field 'image_size' must be square, got {list(image)}")
        feature_sizes = vis.get("backbone_feature_sizes") or [[256, 256], [128, 128], [64, 64]]
        if not isinstance(feature_sizes, list):
            raise ConfigError(f"{vis.path}: field 'backbone_feature_sizes' must be a list of [h, w], "
                              f"got {feature_sizes!r:.60}")
        sizes = tuple(_ints({"backbone_feature_sizes": s}, "backbone_feature_sizes", [], length=2)
                      for s in feature_sizes)
        c = cls(
            image_size=image[0],
            num_channels=config_int(bb, "num_channels", default=3),
            hidden_size=config_int(bb, "hidden_size", default=96),
            patch_kernel_size=_ints(bb, "patch_kernel_size", [7, 7], length=2),
            patch_stride=_ints(bb, "patch_stride", [4, 4], length=2),
            patch_padding=_ints(bb, "patch_padding", [3, 3], length=2, min=0),
            query_stride=_ints(bb, "query_stride", [2, 2], length=2),
            pos_embed_background=_ints(bb, "window_positional_embedding_background_size", [7, 7], length=2),
            num_query_pool_stages=config_int(bb, "num_query_pool_stages", min=0, max=n - 1, default=3),
            blocks_per_stage=stages,
            embed_dim_per_stage=_ints(bb, "embed_dim_per_stage", [96, 192, 384, 768], length=n),
            heads_per_stage=_ints(bb, "num_attention_heads_per_stage", [1, 2, 4, 8], length=n),
            window_size_per_stage=_ints(bb, "window_size_per_stage", [8, 4, 14, 7], length=n, min=0),
            global_attention_blocks=_ints(bb, "global_attention_blocks", [5, 7, 9], min=0),
            mlp_ratio=config_float(bb, "mlp_ratio", min=0.0, min_exclusive=True, default=4.0),
            backbone_act=_act(bb),
            backbone_eps=config_float(bb, "layer_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
            backbone_channel_list=_ints(vis, "backbone_channel_list", [768, 384, 192, 96]),
            backbone_feature_sizes=sizes,
            fpn_hidden_size=config_int(vis, "fpn_hidden_size", default=256),
            fpn_kernel_size=config_int(vis, "fpn_kernel_size", default=1),
            fpn_stride=config_int(vis, "fpn_stride", default=1),
            fpn_padding=config_int(vis, "fpn_padding", min=0, default=0),
            fpn_top_down_levels=_ints(vis, "fpn_top_down_levels", [2, 3], min=0),
            num_feature_levels=config_int(vis, "num_feature_levels", default=3),
            prompt_hidden_size=config_int(pe, "hidden_size", default=256),
            prompt_image_size=config_int(pe, "image_size", default=1024),
            patch_size=config_int(pe, "patch_size", default=16),
            mask_input_channels=config_int(pe, "mask_input_channels", default=16),
            num_point_embeddings=config_int(pe, "num_point_embeddings", default=4),
            prompt_act=_act(pe),
            prompt_eps=config_float(pe, "layer_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
            decoder_hidden_size=config_int(md, "hidden_size", default=256),
            decoder_act=_act(md),
            mlp_dim=config_int(md, "mlp_dim", default=2048),
            decoder_layers=config_int(md, "num_hidden_layers", default=2),
            decoder_heads=config_int(md, "num_attention_heads", default=8),
            attention_downsample_rate=config_int(md, "attention_downsample_rate", default=2),
            num_multimask_outputs=config_int(md, "num_multimask_outputs", default=3),
            iou_head_depth=config_int(md, "iou_head_depth", min=2, default=3),
            iou_head_hidden_dim=config_int(md, "iou_head_hidden_dim", default=256),
            dynamic_multimask_via_stability=config_bool(md, "dynamic_multimask_via_stability", default=True),
            stability_delta=config_float(md, "dynamic_multimask_stability_delta", default=0.05),
            stability_thresh=config_float(md, "dynamic_multimask_stability_thresh", default=0.98),
        )
        c._check(cfg, vis, bb, pe, md)
        return c

    def _check(self, cfg, vis, bb, pe, md) -> None:
        for i, (d, h) in enumerate(zip(self.embed_dim_per_stage, self.heads_per_stage)):
            check_divisible(bb, f"embed_dim_per_stage[{i}]", d, f"num_attention_heads_per_stage[{i}]", h)
        if self.embed_dim_per_stage[0] != self.hidden_size:
            raise ConfigError(f"{bb.path}: embed_dim_per_stage[0] ({self.embed_dim_per_stage[0]}) must equal "
                              f"hidden_size ({self.hidden_size})")
        if tuple(reversed(self.backbone_channel_list)) != self.embed_dim_per_stage:
            raise ConfigError(f"{vis.path}: backbone_channel_list {list(self.backbone_channel_list)} must be "
                              f"embed_dim_per_stage {list(self.embed_dim_per_stage)} reversed")
        if not (3 <= self.num_feature_levels <= len(self.blocks_per_stage)):
            raise ConfigError(f"{vis.path}: num_feature_levels must be in [3, {len(self.blocks_per_stage)}] "
                              f"(the mask decoder reads three levels), got {self.num_feature_levels}")
        c = self.decoder_hidden_size
        if self.prompt_hidden_size != c or self.fpn_hidden_size != c:
            raise ConfigError(f"{cfg.path if hasattr(cfg, 'path') else 'config'}: prompt_encoder hidden_size "
                              f"({self.prompt_hidden_size}), fpn_hidden_size ({self.fpn_hidden_size}) and "
                              f"mask_decoder hidden_size ({c}) must be equal")
        check_divisible(md, "hidden_size", c, "8 (the mask decoder's upscaling widths)", 8)
        check_divisible(md, "hidden_size", c, "attention_downsample_rate", self.attention_downsample_rate)
        check_divisible(md, "hidden_size / attention_downsample_rate", c // self.attention_downsample_rate,
                        "num_attention_heads", self.decoder_heads)
        check_divisible(pe, "hidden_size", c, "2 (sin and cos halves)", 2)
        check_divisible(pe, "mask_input_channels", self.mask_input_channels, "4", 4)
        if self.num_point_embeddings < 4:
            raise ConfigError(f"{pe.path}: num_point_embeddings must be >= 4 (two point labels and two box "
                              f"corners), got {self.num_point_embeddings}")

    @property
    def embedding_size(self) -> int:
        """Side of the lowest-resolution image embedding the mask decoder attends over."""
        return self.prompt_image_size // self.patch_size

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1
