"""Gemma 4 text configs: config.json (or a composite config's `text_config`) to `Gemma4TextConfig`.

Everything HF derives per layer is resolved here once: each layer's type, head dim, kv heads,
window, whether v = k, which earlier layer's keys/values it shares and its MLP width, so the
network (kiln.models.gemma4) only wires blocks. Every field goes through the validated accessors;
a feature kiln does not run is a ConfigError naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from kiln.io.config import ModelConfig, config_bool, config_float, config_int, config_str
from kiln.io.errors import ConfigError

DIM_MAX = 1 << 24
LAYER_TYPES = ("sliding_attention", "full_attention")
ROPE_TYPES = ("default", "proportional")


# ---- config ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer looks like: its attention type and sizes, and whose KV it uses."""

    type: str
    head_dim: int
    kv_heads: int
    window: int | None
    k_eq_v: bool
    kv_source: int | None      # None: projects its own k/v; else the layer whose k/v it attends with
    mlp_hidden: int


@dataclass(frozen=True)
class Gemma4TextConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    layers: tuple[LayerSpec, ...]
    rope: Mapping[str, tuple[str, float, float, float]]   # layer type -> (rope type, theta, partial factor, factor)
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    ple_dim: int = 0                  # hidden_size_per_layer_input (0: no per-layer embeddings)
    ple_vocab_size: int = 0
    vision_bidirectional: bool = False   # use_bidirectional_attention == "vision"
    max_position_embeddings: int = 131072
    pad_token_id: int = 0
    moe: tuple[int, int, int] | None = None   # (num_experts, top_k_experts, moe_intermediate_size)

    @property
    def num_hidden_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "Gemma4TextConfig":
        """From a Gemma 4 text config.json (or a composite config's `text_config`)."""
        where = getattr(cfg, "path", "config.json")
        unified = cfg.get("model_type") == "gemma4_unified_text"   # no PLE or MoE; its own defaults
        moe = None
        if config_bool(cfg, "enable_moe_block", default=False):
            experts = config_int(cfg, "num_experts", max=DIM_MAX)
            moe = (experts, config_int(cfg, "top_k_experts", max=experts),
                   config_int(cfg, "moe_intermediate_size", max=DIM_MAX))
        bidir = cfg.get("use_bidirectional_attention", "vision" if unified else None)
        if bidir not in (None, "vision"):
            raise ConfigError(f"{where}: use_bidirectional_attention={bidir!r} is not supported; expected null "
                              f"or 'vision'")
        act = config_str(cfg, "hidden_activation", default="gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise ConfigError(f"{where}: hidden_activation {act!r} is not supported; Gemma 4 uses "
                              f"'gelu_pytorch_tanh'")
        impl = cfg.get("attn_logit_softcapping")
        if impl is not None:
            raise ConfigError(f"{where}: attn_logit_softcapping={impl!r} is not part of Gemma 4's attention")
        hidden = config_int(cfg, "hidden_size", max=DIM_MAX)
        heads = config_int(cfg, "num_attention_heads", max=DIM_MAX)
        n = config_int(cfg, "num_hidden_layers", max=DIM_MAX)
        kv_heads = config_int(cfg, "num_key_value_heads", max=DIM_MAX, default=heads)
        head_dim = config_int(cfg, "head_dim", max=DIM_MAX, default=256)
        k_eq_v = config_bool(cfg, "attention_k_eq_v", default=False)
        _ignored_old_fields(cfg, where)
        types = _layer_types(cfg, n, where)
        overrides = _per_layer_overrides(cfg, types, k_eq_v, where)
        window = config_int(cfg, "sliding_window", max=2**31 - 1, default=1024 if unified else 512)
        inter = config_int(cfg, "intermediate_size", max=DIM_MAX)
        shared = config_int(cfg, "num_kv_shared_layers", min=0, max=n, default=0)
        double_wide = config_bool(cfg, "use_double_wide_mlp", default=False)
        sources = _kv_sources(types, shared, where)
        layers = []
        for i, t in enumerate(types):
            o = overrides.get(i, {})
            hd, kvh = o.get("head_dim", head_dim), o.get("num_key_value_heads", kv_heads)
            if heads % kvh:
                raise ConfigError(f"{where}: layer {i} has {kvh} kv heads, not a divisor of {heads} query heads")
            layers.append(LayerSpec(
                type=t, head_dim=hd, kv_heads=kvh, window=window if t == "sliding_attention" else None,
                k_eq_v=k_eq_v and t == "full_attention", kv_source=sources[i],
                mlp_hidden=inter * (2 if double_wide and sources[i] is not None else 1)))
        ple = config_int(cfg, "hidden_size_per_layer_input", min=0, max=DIM_MAX, default=0 if unified else 256)
        cap = cfg.get("final_logit_softcapping")
        return cls(
            model_type=config_str(cfg, "model_type", default="gemma4_text"),
            vocab_size=config_int(cfg, "vocab_size", max=DIM_MAX), hidden_size=hidden, num_attention_heads=heads,
            layers=tuple(layers), rope=_rope_parameters(cfg, set(types), where),
            rms_norm_eps=config_float(cfg, "rms_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
            final_logit_softcapping=None if cap is None else config_float(
                cfg, "final_logit_softcapping", min=0.0, min_exclusive=True),
            tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", default=True),
            attention_bias=config_bool(cfg, "attention_bias", default=False),
            ple_dim=ple, ple_vocab_size=config_int(cfg, "vocab_size_per_layer_input", max=DIM_MAX,
                                                   default=262144) if ple else 0,
            vision_bidirectional=bidir == "vision",
            max_position_embeddings=config_int(cfg, "max_position_embeddings", max=2**31 - 1,
                                               default=262144 if unified else 131072),
            pad_token_id=config_int(cfg, "pad_token_id", min=0, default=0), moe=moe)


OLD_LAYOUT_FIELDS = ("sliding_window_pattern", "rope_theta", "rope_local_base_freq", "rope_scaling")


def _ignored_old_fields(cfg, where: str) -> None:
    """Gemma 3's config fields in a Gemma 4 config: HF transformers reads none of them for Gemma 4 (it takes
    `layer_types` and `rope_parameters`, else fixed defaults), so neither does kiln; say so."""
    found = [k for k in OLD_LAYOUT_FIELDS if cfg.get(k) is not None]
    if found:
        warnings.warn(f"{where}: {found} are ignored, as HF transformers ignores them for Gemma 4 (it reads "
                      f"layer_types and rope_parameters, with its defaults where they are missing)")


def _layer_types(cfg, n: int, where: str) -> list[str]:
    """`layer_types`, else HF's fixed 5:1 pattern; the last layer is always full attention, as HF forces it."""
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
    types = list(types)
    if len(types) != n:
        raise ConfigError(f"{where}: layer_types has {len(types)} entries for {n} layers")
    bad = sorted({t for t in types if t not in LAYER_TYPES})
    if bad:
        raise ConfigError(f"{where}: layer_types {bad} are not supported; expected {LAYER_TYPES}")
    types[-1] = "full_attention"
    return types


def _per_layer_overrides(cfg, types: list[str], k_eq_v: bool, where: str) -> dict[int, dict[str, int]]:
    """Head dim / kv heads per layer: `per_layer_config` as saved, else `global_head_dim` (and, with
    attention_k_eq_v, `num_global_key_value_heads`) on the full-attention layers, as HF derives it."""
    raw = cfg.get("per_layer_config")
    if raw is None:
        o = {"head_dim": config_int(cfg, "global_head_dim", max=DIM_MAX, default=512)}
        if k_eq_v and cfg.get("num_global_key_value_heads") is not None:
            o["num_key_value_heads"] = config_int(cfg, "num_global_key_value_heads", max=DIM_MAX)
        return {i: o for i, t in enumerate(types) if t == "full_attention"}
    out = {}
    for key, entry in raw.items():
        if not str(key).isdigit() or int(key) >= len(types) or not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: per_layer_config entry {key!r} must map a layer index < {len(types)} "
                              f"to its overrides")
        unknown = sorted(set(entry) - {"head_dim", "num_key_value_heads"})
        if unknown:
            raise ConfigError(f"{where}: per_layer_config[{key}] overrides {unknown}, which kiln does not support")
        sub = ModelConfig(entry)
        sub.path = f"{where}: per_layer_config[{key}]"
        out[int(key)] = {k: config_int(sub, k, max=DIM_MAX) for k in entry}
    return out


def _kv_sources(types: list[str], shared: int, where: str) -> list[int | None]:
    """For each layer, the layer whose keys/values it attends with when it shares (HF's kv_sharing_modes:
    the last `shared` layers reuse the last earlier layer of their type)."""
    first = len(types) - shared
    if shared == 0:
        return [None] * len(types)
    if first == 0:
        raise ConfigError(f"{where}: num_kv_shared_layers={shared} shares every layer; no layer would make keys")
    last = {t: i for i, t in enumerate(types[:first])}
    missing = sorted({t for t in types[first:]} - set(last))
    if missing:
        raise ConfigError(f"{where}: shared layers of type {missing} have no earlier layer of that type to share")
    return [None if i < first else last[t] for i, t in enumerate(types)]


def _rope_parameters(cfg, used: set[str], where: str) -> dict[str, tuple[str, float, float, float]]:
    """(rope type, theta, partial factor, factor) per layer type from `rope_parameters`, else HF's Gemma 4
    defaults (theta 10k on sliding layers; proportional, 1/4 of the pairs, theta 1M on full ones)."""
    params = cfg.get("rope_parameters")
    if params is None:
        params = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                  "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                     "rope_theta": 1000000.0}}
    out = {}
    for t in sorted(used):
        p = params.get(t)
        if not isinstance(p, Mapping):
            raise ConfigError(f"{where}: rope_parameters has no entry for layer type {t!r}")
        rtype = p.get("rope_type", "default")
        if rtype not in ROPE_TYPES:
            raise ConfigError(f"{where}: rope_parameters[{t!r}] rope type {rtype!r} is not supported; "
                              f"expected one of {ROPE_TYPES}")
        sub = ModelConfig(p)
        sub.path = f"{where}: rope_parameters[{t!r}]"
        out[t] = (rtype, config_float(sub, "rope_theta", min=0.0, min_exclusive=True),
                  config_float(sub, "partial_rotary_factor", min=0.0, max=1.0, default=1.0),
                  config_float(sub, "factor", min=0.0, min_exclusive=True, default=1.0))
    return out
