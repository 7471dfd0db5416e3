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

from pathlib import Path
from typing import Mapping

import numpy as np

from kiln.errors import InputError
from kiln.io.config import ModelConfig, read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, Value, as_dtype
from kiln.nn import (MLP, Concat, DecoderGraphs, Embedding, KeyTable, Layout, Linear, Module, ParamSpec,
                     PromptCache, RMSNorm, Rope, RopeConfig, merge_heads, place_features)
from kiln.nn.moe import Experts, top_k_weights
from kiln.runtime.generation import GenerationConfig
from kiln.runtime.language_model import CausalLM

from .gemma4_config import Gemma4TextConfig, LayerSpec

BLOCK_IDS = "block_ids"   # prefill input [B, S] int64: image blocks that attend bidirectionally (-1: text)


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


class Gemma4Graphs(DecoderGraphs):
    """Prefill and decode graphs of one config and dtype (the `DecoderGraphs` of CausalLM).

    A features prefill of a vision-bidirectional config also takes `block_ids` [B, S] int64
    (kiln.nn.kv_cache: image tokens attend to each other both ways); `block_layers` says where, as
    the HF model does: "all" (Gemma4Unified) or "sliding" (Gemma4ForConditionalGeneration). The
    prompt cache takes each layer's KV shape from what it writes (per-type head dims, shared KV)."""

    def __init__(self, config: Gemma4TextConfig, dtype: str = "float32", prefix: str = "model.",
                 block_layers: str = "sliding"):
        super().__init__(config, Gemma4Text(config, as_dtype(dtype).name, prefix), dtype,
                         kv_heads=config.layers[0].kv_heads, head_dim=config.layers[0].head_dim)
        self.block_layers = block_layers

    def prompt_cache(self, g: Graph, mask, cache_len: int | None, features: bool) -> PromptCache:
        b, s = mask.shape
        blocks = g.input(BLOCK_IDS, (b, s), "int64") if features and self.config.vision_bidirectional else None
        return PromptCache(g, mask, cache_len, dtype=self.dtype, blocks=blocks, block_layers=self.block_layers)


class Gemma4LM(CausalLM):
    """A CausalLM whose features may carry image block ids: (inputs_embeds, embeds_mask[, block_ids]).

    block_ids [B, S] int64 number each image's run of tokens (-1 elsewhere); a vision-bidirectional
    config lets the tokens of one block see each other in the prompt (where: Gemma4Graphs.block_layers)."""

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
        if blocks is not None and (blocks >= 0).any() and not self.config.vision_bidirectional:
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
