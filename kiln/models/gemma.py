"""Google's Gemma decoder LMs: Gemma, Gemma 2 and Gemma 3 (text; also the text stack of Gemma 3's
vision-language checkpoints).

Where they differ from Llama: a GeGLU MLP (tanh GELU), RMSNorm scaling by (1 + w), embeddings
multiplied by sqrt(hidden) in the model dtype, a head dim that need not be hidden / heads, a tied
LM head. Gemma 2 adds attention-logit and final-logit tanh softcapping, a `query_pre_attn_scalar`
attention scale, alternating sliding-window and global layers, and norms on both sides of each
sublayer (`TransformerBlock`'s output norms). Gemma 3 adds q/k RMSNorm per head and a RoPE base
(and scaling) per layer type: local (sliding) layers and global ones.

Both config layouts load: transformers 5.x (`layer_types`, `rope_parameters` keyed by layer type)
and the older one hub checkpoints carry (`sliding_window_pattern`, `rope_local_base_freq`,
`rope_theta` + `rope_scaling` for the global layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln.io.config import (check_divisible, config_bool, config_float, config_get, config_int, config_str,
                            read_config)
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, as_dtype
from kiln.nn import (MLP, Attention, Concat, DecoderGraphs, Embedding, KeyTable, Layout, Linear, Module, RMSNorm,
                     Rope, RopeConfig, TransformerBlock, place_features, softcap)
from kiln.nn.mlp import HF_ACTIVATIONS
from kiln.runtime.generation import GenerationConfig
from kiln.runtime.language_model import CausalLM

# text model types; "gemma3" is the vision-language checkpoint, whose text_config is a gemma3_text one
TEXT_TYPES = ("gemma", "gemma2", "gemma3_text")
MODEL_TYPES = TEXT_TYPES + ("gemma3",)
SLIDING, FULL = "sliding_attention", "full_attention"
DIM_MAX = 1 << 24   # no real model has a size or head count near this; bigger values are config damage


@dataclass(frozen=True)
class GemmaConfig:
    model_type: str                    # gemma, gemma2 or gemma3_text
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: tuple[str, ...]       # SLIDING or FULL per layer
    ropes: Mapping[str, RopeConfig]    # SLIDING and FULL -> their rotary settings
    rms_norm_eps: float = 1e-6
    hidden_act: str = "gelu_tanh"
    sliding_window: int | None = None
    query_pre_attn_scalar: float | None = None   # attention scale = this ** -0.5 (None: head_dim)
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192

    @property
    def sandwich_norms(self) -> bool:
        """Gemma 2 and 3 normalize each sublayer's output too (post_attention / post_feedforward norms)."""
        return self.model_type != "gemma"

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "gemma3_text"

    def window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "GemmaConfig":
        """From a HF config.json; a Gemma 3 vision-language config gives its text_config's model."""
        where = getattr(cfg, "path", "config.json")
        model_type = cfg.get("model_type")
        if model_type == "gemma3":
            text = config_get(cfg, "text_config", default=None)
            if not isinstance(text, Mapping):
                raise ConfigError(f"{where}: a gemma3 config needs a 'text_config' object")
            text = _Where({**text, "model_type": "gemma3_text"}, f"{where}: text_config")
            return cls.from_hf(text)
        if model_type not in TEXT_TYPES:
            raise ConfigError(f"{where}: model_type {model_type!r} is not a Gemma type {MODEL_TYPES}")
        if config_bool(cfg, "use_bidirectional_attention", default=False):
            raise ConfigError(f"{where}: use_bidirectional_attention=true (an encoder variant) is not supported; "
                              f"kiln's Gemma is the causal decoder")
        act_name = config_str(cfg, "hidden_act" if model_type == "gemma" else "hidden_activation",
                              default="gelu_pytorch_tanh")
        if model_type == "gemma" and act_name == "gelu":
            act_name = "gelu_pytorch_tanh"   # HF: the legacy value of the official releases means tanh GELU
        if act_name not in HF_ACTIVATIONS:
            raise ConfigError(f"{where}: hidden activation {act_name!r} is not supported; expected one of "
                              f"{sorted(HF_ACTIVATIONS)}")
        hidden, heads = config_int(cfg, "hidden_size", max=DIM_MAX), config_int(cfg, "num_attention_heads", max=DIM_MAX)
        kv_heads = config_int(cfg, "num_key_value_heads", max=DIM_MAX, default=heads)
        check_divisible(cfg, "num_attention_heads", heads, "num_key_value_heads", kv_heads)
        layers = config_int(cfg, "num_hidden_layers", max=DIM_MAX)
        head_dim = config_int(cfg, "head_dim", max=DIM_MAX, default=hidden // heads)
        layer_types = _layer_types(cfg, model_type, layers, where)
        later = model_type != "gemma"   # Gemma 2 and 3 settings; Gemma's HF model has none of them
        caps = {}   # Gemma 2 caps by default, Gemma 3 only when its config asks
        for name, gemma2_default in (("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0)):
            caps[name] = _optional(cfg, name, gemma2_default if model_type == "gemma2" else None) if later else None
        return cls(
            model_type=model_type, vocab_size=config_int(cfg, "vocab_size", max=DIM_MAX), hidden_size=hidden,
            intermediate_size=config_int(cfg, "intermediate_size", max=DIM_MAX), num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, layer_types=layer_types,
            ropes=_ropes(cfg, model_type, where),
            rms_norm_eps=config_float(cfg, "rms_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
            hidden_act=HF_ACTIVATIONS[act_name],
            sliding_window=_optional(cfg, "sliding_window", 4096, config_int, max=2**31 - 1) if later else None,
            query_pre_attn_scalar=_optional(cfg, "query_pre_attn_scalar", 256.0) if later else None,
            attention_bias=config_bool(cfg, "attention_bias", default=False),
            tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", default=True),
            max_position_embeddings=config_int(cfg, "max_position_embeddings", max=2**31 - 1, default=8192),
            **caps)


def _optional(cfg, name: str, default, read=config_float, **limits):
    """A positive setting that a JSON null switches off (None), as HF reads it; `default` when absent."""
    if name not in cfg:
        return default
    if cfg[name] is None:
        return None
    return read(cfg, name, **({"min": 0.0, "min_exclusive": True} if read is config_float else {}), **limits)


class _Where(dict):
    """A config dict that names where it came from in errors (`cfg.path`)."""

    def __init__(self, values: Mapping, path: str):
        super().__init__(values)
        self.path = path


def _layer_types(cfg, model_type: str, layers: int, where: str) -> tuple[str, ...]:
    """Per-layer attention kind: `layer_types`, else Gemma 2's alternation or Gemma 3's sliding_window_pattern."""
    if model_type == "gemma":
        return (FULL,) * layers
    types = config_get(cfg, "layer_types", default=None)
    if types is None:
        pattern = 2 if model_type == "gemma2" else config_int(cfg, "sliding_window_pattern", default=6)
        return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers))
    if not isinstance(types, list) or len(types) != layers or not set(types) <= {SLIDING, FULL}:
        raise ConfigError(f"{where}: layer_types must list {layers} entries of {SLIDING!r} or {FULL!r}, "
                          f"got {types!r}")
    return tuple(types)


def _ropes(cfg, model_type: str, where: str) -> dict[str, RopeConfig]:
    """RopeConfig per layer type: Gemma 3's local/global bases (5.x `rope_parameters` keyed by layer type,
    or the older `rope_local_base_freq` + `rope_theta`/`rope_scaling`); one shared config before Gemma 3."""
    if model_type != "gemma3_text":
        rope = RopeConfig.from_hf(cfg, where)
        return {SLIDING: rope, FULL: rope}
    params = config_get(cfg, "rope_parameters", default=None)
    if isinstance(params, Mapping) and set(params) & {SLIDING, FULL}:
        per_type = {k: dict(params.get(k) or {}) for k in (SLIDING, FULL)}
    else:  # older layout
        full = dict(config_get(cfg, "rope_scaling", default=None) or {})
        full.setdefault("rope_theta", config_float(cfg, "rope_theta", min=0.0, min_exclusive=True, default=1e6))
        local = {"rope_type": "default",
                 "rope_theta": config_float(cfg, "rope_local_base_freq", min=0.0, min_exclusive=True,
                                            default=1e4)}
        per_type = {SLIDING: local, FULL: full}
    per_type[SLIDING].setdefault("rope_theta", 1e4)
    per_type[FULL].setdefault("rope_theta", 1e6)
    return {k: RopeConfig.from_hf({"rope_parameters": per_type[k]}, f"{where}: rope for {k} layers")
            for k in (SLIDING, FULL)}


# ---- the network ---------------------------------------------------------------------------

class Gemma(Module):
    """Scaled token embedding, pre-norm blocks (sandwich-normed from Gemma 2), final norm, tied LM head."""

    def __init__(self, cfg: GemmaConfig, dtype: str = "float32"):
        super().__init__("", dtype)
        h, eps, dt = cfg.hidden_size, cfg.rms_norm_eps, self.dtype
        self.cfg = cfg
        self.ropes = {kind: Rope(cfg.ropes[kind], cfg.head_dim, "half", dt) for kind in sorted(set(cfg.layer_types))}
        self.embed = Embedding("model.embed_tokens", cfg.vocab_size, h, scale=h ** 0.5, dtype=dt)
        scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar ** -0.5

        def norm(name):
            return RMSNorm(name, h, eps, add_unit_offset=True, dtype=dt)

        self.layers = []
        for i, kind in enumerate(cfg.layer_types):
            p = f"model.layers.{i}"
            attn = Attention(f"{p}.self_attn", h, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                             qkv_bias=cfg.attention_bias, out_bias=cfg.attention_bias, causal=True,
                             window=cfg.window(i), softcap=cfg.attn_logit_softcapping, scale=scale,
                             qk_norm_eps=eps if cfg.qk_norm else None, qk_norm_unit_offset=True,
                             rope=self.ropes[kind], layer=i, dtype=dt)
            mlp = MLP(f"{p}.mlp", h, cfg.intermediate_size, cfg.hidden_act, gated=True, dtype=dt)
            if cfg.sandwich_norms:
                block = TransformerBlock(norm(f"{p}.input_layernorm"), attn, norm(f"{p}.pre_feedforward_layernorm"),
                                         mlp, attn_out_norm=norm(f"{p}.post_attention_layernorm"),
                                         mlp_out_norm=norm(f"{p}.post_feedforward_layernorm"))
            else:
                block = TransformerBlock(norm(f"{p}.input_layernorm"), attn, norm(f"{p}.post_attention_layernorm"),
                                         mlp)
            self.layers.append(block)
        self.norm = norm("model.norm")
        self.lm_head = None if cfg.tie_word_embeddings else Linear("lm_head", h, cfg.vocab_size, dtype=dt)

    def __call__(self, g: Graph, ids, positions, cache, last_only: bool = False, features=None):
        """float32 logits of ids [B, S] at `positions`; the cache decides what attention sees.

        `features` (inputs_embeds, embeds_mask) replace the scaled token embeddings where the mask is set."""
        x = place_features(g, self.embed(g, ids), features)
        tables = {kind: rope.tables(g, positions) for kind, rope in self.ropes.items()}
        for kind, block in zip(self.cfg.layer_types, self.layers):
            x = block(g, x, rope_tables=tables[kind], cache=cache)
        x = self.norm(g, x)
        if last_only:
            x = g.slice(x, axes=[1], starts=[x.shape[1] - 1], ends=[x.shape[1]])
        logits = self.embed.as_linear(g, x) if self.lm_head is None else self.lm_head(g, x)
        logits = softcap(g, logits, self.cfg.final_logit_softcapping)
        return logits if self.dtype == "float32" else g.cast(logits, dtype="float32")


class GemmaGraphs(DecoderGraphs):
    """The prefill and decode graphs of one config and dtype (the `DecoderGraphs` of CausalLM)."""

    def __init__(self, config: GemmaConfig, dtype: str = "float32"):
        super().__init__(config, Gemma(config, as_dtype(dtype).name), dtype)


# ---- checkpoint keys --------------------------------------------------------------------------

_KEYS = {
    "model.layers.{i}.self_attn.qkv_proj.{kind}": Concat(*(f"layers.{{i}}.self_attn.{p}_proj.{{kind}}" for p in "qkv")),
    "model.layers.{i}.mlp.gate_up_proj.{kind}": Concat("layers.{i}.mlp.gate_proj.{kind}",
                                                       "layers.{i}.mlp.up_proj.{kind}"),
    "model.layers.{i}.{name}": "layers.{i}.{name}",
    "model.{name}": "{name}",
    "lm_head.weight": "lm_head.weight",
}
# The text stack of a *ForCausalLM (`model.`), a base model (no prefix) or a Gemma 3 vision-language
# checkpoint (`model.language_model.` in transformers 5.x, `language_model.model.` before); the
# vision tower and projector stay unused.
KEYS = KeyTable("Gemma", Layout(
    "hf", "embed_tokens.weight", strip=("model.", "model.language_model.", "language_model.model."), keys=_KEYS,
    ignore=("lm_head.weight", "language_model.lm_head.weight", "*rotary_emb.inv_freq", "*vision_tower.*",
            "*multi_modal_projector.*")))


def gemma_params(weights: WeightMap, cfg: GemmaConfig, dtype: str = "float32", layers=None) -> dict[str, np.ndarray]:
    """Graph parameters from a checkpoint: shapes checked, Q/K/V and gate/up fused; warns about unused tensors."""
    layers = range(cfg.num_hidden_layers) if layers is None else layers
    return KEYS.load(weights, Gemma(cfg, dtype).params(), layers=layers)


# ---- loading --------------------------------------------------------------------------------

def load_gemma(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
               progress: bool = False) -> CausalLM:
    """A Gemma, Gemma 2 or Gemma 3 checkpoint directory as a CausalLM (a Gemma 3 vision-language one: its text)."""
    d = Path(path)
    raw = read_config(d)
    cfg = GemmaConfig.from_hf(raw)
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    tokenizer = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    return gemma_from_weights(cfg, weights, tokenizer=tokenizer, generation_config=GenerationConfig.from_dir(d, raw),
                              device=device, dtype=dtype, optimize=optimize, progress=progress, name=str(d))


def gemma_from_weights(cfg: GemmaConfig, weights: WeightMap, *, tokenizer=None,
                       generation_config: GenerationConfig | None = None, device: str = "cpu",
                       dtype: str = "float32", optimize: bool = True, progress: bool = False,
                       name: str = "model") -> CausalLM:
    """A CausalLM from a parsed config and checkpoint tensors under HF keys (safetensors or GGUF)."""
    layers = range(cfg.num_hidden_layers)
    if progress:
        from tqdm import tqdm

        layers = tqdm(layers, desc="loading weights", unit="layer", leave=False)
    params = gemma_params(weights, cfg, dtype, layers=layers)
    return CausalLM(GemmaGraphs(cfg, dtype), params, tokenizer=tokenizer, generation_config=generation_config,
                    device=device, dtype=dtype, optimize=optimize, name=name)
