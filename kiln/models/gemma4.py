"""Gemma 4 text stack: `Gemma4ForCausalLM` (model_type gemma4_text) and the language model of
`Gemma4ForConditionalGeneration` (gemma4) and `Gemma4UnifiedForConditionalGeneration` (gemma4_unified).

What sets it apart from Llama, all as HF transformers defines it:
* layers of two types (`layer_types`): sliding-window layers and full-attention layers, each
  type with its own head dim (`global_head_dim` on full layers), kv heads and RoPE (the full
  layers' "proportional" RoPE rotates a fraction of the frequency pairs over the whole head);
* q/k RMSNorm (plain weight), a scale-free RMSNorm on v, attention scale 1; full layers may
  take v = k's projection (`attention_k_eq_v`);
* sandwich norms around attention and MLP, a per-layer output scalar, tanh-GELU gated MLP,
  embeddings scaled by sqrt(hidden), optional final-logit softcapping;
* per-layer embeddings (PLE, `hidden_size_per_layer_input`): a second token table plus a
  projection of the embeddings give each layer a small extra input, gated into its residual;
* KV sharing (`num_kv_shared_layers`): the last layers attend with the keys/values of the last
  earlier layer of their type and project none of their own (their MLP may be double wide).
* an optional mixture-of-experts block (`enable_moe_block`) beside each layer's MLP: a router
  (scale-free norm, learned scale, softmax, top-k renormalized, per-expert scale) over experts
  that run densely (kiln.nn.moe), its output normed and added to the MLP's.
Not supported (ConfigError): bidirectional attention over all tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln.errors import InputError
from kiln.io.config import ModelConfig, config_bool, config_float, config_int, config_str, read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, Value, as_dtype
from kiln.nn import (MLP, Concat, DecodeCache, Embedding, KeyTable, Layout, Linear, Module, ParamSpec, PromptCache,
                     RMSNorm, Rope, RopeConfig, feature_inputs, merge_heads, place_features)
from kiln.nn.moe import Experts, top_k_weights
from kiln.runtime.generation import GenerationConfig
from kiln.runtime.language_model import CausalLM

DIM_MAX = 1 << 24
LAYER_TYPES = ("sliding_attention", "full_attention")
ROPE_TYPES = ("default", "proportional")
BLOCK_IDS = "block_ids"   # prefill input [B, S] int64: image blocks that attend bidirectionally (-1: text)


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


def make_rope(spec: tuple[str, float, float, float], head_dim: int, dtype: str) -> Rope:
    """RoPE over the whole head. "proportional" (HF): the first partial*D/2 pairs turn at
    1 / theta^(2i / D), the rest not at all (inverse frequency 0), all divided by `factor`."""
    rtype, theta, partial, factor = spec
    rope = Rope(RopeConfig(theta=theta), head_dim, "half", dtype)
    if rtype == "proportional":
        angles = int(partial * head_dim // 2)
        inv = np.zeros(head_dim // 2, np.float32)
        exps = np.arange(0, 2 * angles, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
        inv[:angles] = np.float32(1.0) / (np.float32(theta) ** exps)
        rope.inv_freq = (inv / np.float32(factor)).astype(np.float32)
    return rope


# ---- the network ------------------------------------------------------------------------------

class Gemma4Attention(Module):
    """Self-attention with q/k norm, scale-free v norm and scale 1; a sharing layer has only q and o."""

    def __init__(self, name: str, hidden: int, heads: int, spec: LayerSpec, layer: int, rope: Rope, *,
                 eps: float, bias: bool, dtype: str):
        super().__init__(name, dtype)
        self.heads, self.kv_heads, self.head_dim = heads, spec.kv_heads, spec.head_dim
        self.window, self.rope, self.source = spec.window, rope, spec.kv_source
        self.layer, self.causal, self.softcap, self.scale = layer, True, None, 1.0
        self.q = Linear(f"{name}.q_proj", hidden, heads * spec.head_dim, bias, dtype=dtype)
        self.out = Linear(f"{name}.o_proj", heads * spec.head_dim, hidden, bias, dtype=dtype)
        self.q_norm = RMSNorm(f"{name}.q_norm", spec.head_dim, eps, dtype=dtype)
        self.k = self.v = self.k_norm = None
        if spec.kv_source is None:
            self.k = Linear(f"{name}.k_proj", hidden, spec.kv_heads * spec.head_dim, bias, dtype=dtype)
            if not spec.k_eq_v:
                self.v = Linear(f"{name}.v_proj", hidden, spec.kv_heads * spec.head_dim, bias, dtype=dtype)
            self.k_norm = RMSNorm(f"{name}.k_norm", spec.head_dim, eps, dtype=dtype)
        self.v_norm = RMSNorm(f"{name}.v_norm", spec.head_dim, eps, scale=False, dtype=dtype)

    def heads_of(self, g: Graph, t: Value, n: int) -> Value:
        b, s, _ = t.shape
        return g.reshape(t, shape=[b, s, n, self.head_dim])

    def __call__(self, g: Graph, x: Value, *, rope_tables, cache) -> Value:
        to_bhsd = [0, 2, 1, 3]
        q = self.rope(g, g.transpose(self.q_norm(g, self.heads_of(g, self.q(g, x), self.heads)), perm=to_bhsd),
                      rope_tables)
        if self.source is not None:
            o = cache.attend_shared(g, self, q, self.source)
        else:
            k = self.heads_of(g, self.k(g, x), self.kv_heads)
            v = k if self.v is None else self.heads_of(g, self.v(g, x), self.kv_heads)
            k = self.rope(g, g.transpose(self.k_norm(g, k), perm=to_bhsd), rope_tables)
            v = g.transpose(self.v_norm(g, v), perm=to_bhsd)
            o = cache.attend(g, self, q, k, v)
        return self.out(g, merge_heads(g, o))

    def attend(self, g: Graph, q: Value, k: Value, v: Value, mask: Value | None = None, *,
               positional: bool = True) -> Value:
        return g.attention(q, k, v, mask, causal=positional, window=self.window if positional else None,
                           scale=self.scale)


class LayerScalar(Module):
    """The [1] factor HF stores per layer (`layer_scalar`) that scales the layer's output."""

    def own_params(self) -> dict[str, ParamSpec]:
        return {"layer_scalar": ParamSpec((1,), self.dtype)}

    def __call__(self, g: Graph, x: Value) -> Value:
        return x * self.param(g, "layer_scalar")


class Gemma4Layer(Module):
    """norm -> attention -> norm, + residual; norm -> MLP -> norm, + residual; the per-layer input
    gated in (PLE); times the layer scalar."""

    def __init__(self, prefix: str, cfg: Gemma4TextConfig, i: int, rope: Rope, dtype: str):
        super().__init__("", dtype)
        p, h, eps, spec = f"{prefix}layers.{i}", cfg.hidden_size, cfg.rms_norm_eps, cfg.layers[i]
        norm = lambda n, d=h: RMSNorm(f"{p}.{n}", d, eps, dtype=dtype)  # noqa: E731
        self.attn_norm, self.post_attn_norm = norm("input_layernorm"), norm("post_attention_layernorm")
        self.mlp_norm, self.post_mlp_norm = norm("pre_feedforward_layernorm"), norm("post_feedforward_layernorm")
        self.attn = Gemma4Attention(f"{p}.self_attn", h, cfg.num_attention_heads, spec, i, rope,
                                    eps=eps, bias=cfg.attention_bias, dtype=dtype)
        self.mlp = MLP(f"{p}.mlp", h, spec.mlp_hidden, "gelu_tanh", gated=True, dtype=dtype)
        self.ple_gate = self.ple_proj = self.ple_norm = None
        if cfg.ple_dim:
            self.ple_gate = Linear(f"{p}.per_layer_input_gate", h, cfg.ple_dim, dtype=dtype)
            self.ple_proj = Linear(f"{p}.per_layer_projection", cfg.ple_dim, h, dtype=dtype)
            self.ple_norm = norm("post_per_layer_input_norm")
        self.scalar = LayerScalar(p, dtype)
        self.router = self.experts = None
        if cfg.moe is not None:
            experts, top_k, hidden = cfg.moe
            self.router = Router(f"{p}.router", h, experts, top_k, eps, dtype)
            self.experts = Experts(f"{p}.experts", experts, h, hidden, "gelu_tanh", dtype)
            self.mlp_out_norm, self.experts_out_norm = norm("post_feedforward_layernorm_1"), \
                norm("post_feedforward_layernorm_2")
            self.experts_norm = norm("pre_feedforward_layernorm_2")

    def __call__(self, g: Graph, x: Value, per_layer_input: Value | None, **attn_kw) -> Value:
        x = x + self.post_attn_norm(g, self.attn(g, self.attn_norm(g, x), **attn_kw))
        x = x + self.post_mlp_norm(g, self.feed_forward(g, x))
        if self.ple_gate is not None:
            gated = g.gelu(self.ple_gate(g, x), approximate="tanh") * per_layer_input
            x = x + self.ple_norm(g, self.ple_proj(g, gated))
        return self.scalar(g, x)


    def feed_forward(self, g: Graph, x: Value) -> Value:
        """The MLP; with MoE, its normed output plus the normed experts' (both read the layer's input x)."""
        h = self.mlp(g, self.mlp_norm(g, x))
        if self.experts is None:
            return h
        b, s, d = x.shape
        flat = g.reshape(x, shape=[b * s, d])
        moe = self.experts(g, self.experts_norm(g, flat), self.router(g, flat))
        return self.mlp_out_norm(g, h) + self.experts_out_norm(g, g.reshape(moe, shape=[b, s, d]))


class Router(Module):
    """Routing weights [T, E]: softmax(proj(norm(x) * scale / sqrt(H))) in float32, kept at the top k,
    renormalized to sum 1, times a per-expert scale (zero for experts a token does not use)."""

    def __init__(self, name: str, dim: int, experts: int, top_k: int, eps: float, dtype: str):
        super().__init__(name, dtype)
        self.dim, self.experts, self.top_k = dim, experts, top_k
        self.norm = RMSNorm(f"{name}.norm", dim, eps, scale=False, dtype=dtype)
        self.proj = Linear(f"{name}.proj", dim, experts, dtype=dtype)

    def own_params(self) -> dict[str, ParamSpec]:
        return {"scale": ParamSpec((self.dim,), self.dtype), "per_expert_scale": ParamSpec((self.experts,), self.dtype)}

    def __call__(self, g: Graph, x: Value) -> Value:
        h = self.norm(g, x) * self.param(g, "scale") * g.scalar(self.dim ** -0.5, self.dtype)
        scores = self.proj(g, h)
        probs = g.softmax(scores if self.dtype == "float32" else g.cast(scores, dtype="float32"), axis=-1)
        kept = top_k_weights(g, probs, self.top_k)
        kept = kept / g.sum(kept, axes=[-1], keepdims=True)
        scale = self.param(g, "per_expert_scale")
        return kept * (scale if self.dtype == "float32" else g.cast(scale, dtype="float32"))


class PerLayerEmbeddings(Module):
    """PLE: per layer, (norm(proj(embeds) / sqrt(hidden)) + table[ids] * sqrt(P)) / sqrt(2), [B, S, P]."""

    def __init__(self, prefix: str, cfg: Gemma4TextConfig, dtype: str):
        super().__init__("", dtype)
        n, p = cfg.num_hidden_layers, cfg.ple_dim
        self.layers, self.dim, self.hidden = n, p, cfg.hidden_size
        self.table = Embedding(f"{prefix}embed_tokens_per_layer", cfg.ple_vocab_size, n * p, dtype=dtype)
        self.proj = Linear(f"{prefix}per_layer_model_projection", cfg.hidden_size, n * p, dtype=dtype)
        self.norm = RMSNorm(f"{prefix}per_layer_projection_norm", p, cfg.rms_norm_eps, dtype=dtype)

    def __call__(self, g: Graph, ids: Value, embeds: Value) -> list[Value]:
        b, s = ids.shape
        dt = self.dtype
        tokens = g.reshape(self.table(g, ids) * g.scalar(self.dim ** 0.5, dt), shape=[b, s, self.layers, self.dim])
        context = self.proj(g, embeds) * g.scalar(self.hidden ** -0.5, dt)
        context = self.norm(g, g.reshape(context, shape=[b, s, self.layers, self.dim]))
        both = (context + tokens) * g.scalar(2.0 ** -0.5, dt)
        return [g.reshape(g.slice(both, axes=[2], starts=[i], ends=[i + 1]), shape=[b, s, self.dim])
                for i in range(self.layers)]


class Gemma4Text(Module):
    """Scaled token embedding (+ features), PLE, the layers, final norm, tied/untied head, softcap."""

    def __init__(self, cfg: Gemma4TextConfig, dtype: str = "float32", prefix: str = "model."):
        super().__init__("", dtype)
        self.cfg, dt = cfg, self.dtype
        self.ropes = {t: make_rope(cfg.rope[t], next(s.head_dim for s in cfg.layers if s.type == t), dt)
                      for t in cfg.rope}
        self.embed = Embedding(f"{prefix}embed_tokens", cfg.vocab_size, cfg.hidden_size, dtype=dt)
        self.ple = PerLayerEmbeddings(prefix, cfg, dt) if cfg.ple_dim else None
        self.layers = [Gemma4Layer(prefix, cfg, i, self.ropes[s.type], dt) for i, s in enumerate(cfg.layers)]
        self.norm = RMSNorm(f"{prefix}norm", cfg.hidden_size, cfg.rms_norm_eps, dtype=dt)
        self.lm_head = None if cfg.tie_word_embeddings else Linear("lm_head", cfg.hidden_size, cfg.vocab_size,
                                                                   dtype=dt)

    def __call__(self, g: Graph, ids, positions, cache, last_only: bool = False, features=None):
        dt = self.dtype
        x = place_features(g, self.embed(g, ids) * g.scalar(self.cfg.hidden_size ** 0.5, dt), features)
        per_layer = self.ple(g, ids, x) if self.ple is not None else [None] * len(self.layers)
        tables = {t: rope.tables(g, positions) for t, rope in self.ropes.items()}
        for layer, spec, extra in zip(self.layers, self.cfg.layers, per_layer):
            x = layer(g, x, extra, rope_tables=tables[spec.type], cache=cache)
        x = self.norm(g, x)
        if last_only:
            x = g.slice(x, axes=[1], starts=[x.shape[1] - 1], ends=[x.shape[1]])
        logits = self.embed.as_linear(g, x) if self.lm_head is None else self.lm_head(g, x)
        cap = self.cfg.final_logit_softcapping
        if cap is not None:
            logits = g.tanh(logits * g.scalar(1.0 / cap, dt)) * g.scalar(cap, dt)
        return logits if dt == "float32" else g.cast(logits, dtype="float32")


class Gemma4Graphs:
    """Prefill and decode graphs of one config and dtype (the `DecoderGraphs` of CausalLM).

    A features prefill of a vision-bidirectional config also takes `block_ids` [B, S] int64
    (kiln.nn.kv_cache: image tokens attend to each other both ways)."""

    def __init__(self, config: Gemma4TextConfig, dtype: str = "float32", prefix: str = "model."):
        self.config, self.dtype = config, as_dtype(dtype).name
        self.model = Gemma4Text(config, self.dtype, prefix)
        self.num_layers, self.vocab_size = config.num_hidden_layers, config.vocab_size
        self.num_kv_heads, self.head_dim = config.layers[0].kv_heads, config.layers[0].head_dim

    def prefill_graph(self, batch: int, seq: int, last_only: bool = False, cache_len: int | None = None,
                      features: bool = False) -> Graph:
        g = Graph(f"gemma4_prefill_b{batch}_s{seq}" + (f"_l{cache_len}" if cache_len else "")
                  + ("_features" if features else ""))
        ids = g.input("input_ids", (batch, seq), "int64")
        mask = g.input("attention_mask", (batch, seq), "int64")
        pos = g.input("position_ids", (batch, seq), "int64")
        feats = feature_inputs(g, batch, seq, self.config.hidden_size, self.dtype) if features else None
        blocks = g.input(BLOCK_IDS, (batch, seq), "int64") if features and self.config.vision_bidirectional else None
        cache = PromptCache(g, mask, cache_len, dtype=self.dtype, blocks=blocks)
        g.output("logits", self.model(g, ids, pos, cache, last_only, features=feats))
        return g

    def decode_graph(self, batch: int, max_len: int) -> Graph:
        g = Graph(f"gemma4_decode_b{batch}_l{max_len}")
        ids = g.input("input_ids", (batch, 1), "int64")
        pos = g.input("position_ids", (batch, 1), "int64")
        cache = DecodeCache(g, batch, max_len, self.num_kv_heads, self.head_dim, self.dtype)
        g.output("logits", self.model(g, ids, pos, cache))
        return g


class Gemma4LM(CausalLM):
    """A CausalLM whose features may carry image block ids: (inputs_embeds, embeds_mask[, block_ids]).

    block_ids [B, S] int64 number each image's run of tokens (-1 elsewhere); a vision-bidirectional
    config lets the tokens of one block see each other in the prompt (HF's `mm_token_type_ids` path)."""

    def _features(self, features, ids: np.ndarray) -> dict:
        if features is None:
            return {}
        embeds, where, *rest = features
        feeds = super()._features((embeds, where), ids)
        blocks = rest[0] if rest else None
        if blocks is not None:
            blocks = np.asarray(blocks)
            if blocks.shape != ids.shape or not np.issubdtype(blocks.dtype, np.integer):
                raise InputError(f"block_ids must be an integer array of input_ids' shape {ids.shape}, "
                                 f"got {blocks.dtype} {blocks.shape}")
        if self.config.vision_bidirectional:
            feeds[BLOCK_IDS] = np.full(ids.shape, -1, np.int64) if blocks is None else blocks.astype(np.int64)
        elif blocks is not None and (blocks >= 0).any():
            raise InputError("block_ids mark bidirectional image blocks, but this config's "
                             "use_bidirectional_attention is not 'vision'")
        return feeds


# ---- checkpoint keys ----------------------------------------------------------------------------

def text_layout(prefix: str) -> Layout:
    """Checkpoint keys of a text stack under `prefix` ("model." for Gemma4ForCausalLM,
    "model.language_model." inside a composite checkpoint, whose other towers are ignored)."""
    return Layout("causal-lm" if prefix == "model." else "conditional-generation", f"{prefix}embed_tokens.weight",
                  keys={f"{prefix}layers.{{i}}.mlp.gate_up_proj.weight": Concat(
                      f"{prefix}layers.{{i}}.mlp.gate_proj.weight", f"{prefix}layers.{{i}}.mlp.up_proj.weight"),
                      "{name}": "{name}"},
                  ignore=("lm_head.weight", "model.vision_tower.*", "model.audio_tower.*", "model.embed_vision.*",
                          "model.embed_audio.*", "model.vision_embedder.*"))


def text_params(weights: WeightMap, cfg: Gemma4TextConfig, dtype: str, prefix: str) -> dict[str, np.ndarray]:
    """The text stack's parameters (gate/up fused); a tied model ignores a stored head, as HF does."""
    spec = Gemma4Text(cfg, dtype, prefix).params()
    return KeyTable("Gemma 4", text_layout(prefix)).load(weights, spec, layers=range(cfg.num_hidden_layers))


# ---- loading -------------------------------------------------------------------------------------

def text_config_of(raw: ModelConfig) -> tuple[ModelConfig, str]:
    """The text config and the weights' prefix: a composite config's `text_config` or the config itself."""
    if "text_config" not in raw:
        return raw, "model."
    sub = raw["text_config"]
    if not isinstance(sub, Mapping):
        raise ConfigError(f"{raw.path}: text_config must be an object, found {type(sub).__name__}")
    text = ModelConfig(sub)
    text.path = f"{raw.path}: text_config"
    return text, "model.language_model."


def load_gemma4(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
                progress: bool = False) -> Gemma4LM:
    """A Gemma 4 checkpoint's text stack as a CausalLM (Gemma4ForCausalLM, or the language model of
    Gemma4ForConditionalGeneration; its vision and audio towers are not loaded)."""
    d = Path(path)
    raw = read_config(d)
    text, prefix = text_config_of(raw)
    cfg = Gemma4TextConfig.from_hf(text)
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    params = text_params(weights, cfg, dtype, prefix)
    tokenizer = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    return Gemma4LM(Gemma4Graphs(cfg, dtype, prefix), params, tokenizer=tokenizer,
                    generation_config=GenerationConfig.from_dir(d, {**text, **raw}), device=device, dtype=dtype,
                    optimize=optimize, name=str(d))
