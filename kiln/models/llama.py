"""Llama-architecture decoder LMs: Llama 2/3 and SmolLM2, Mistral, Qwen2, Qwen3.

Pre-norm blocks of RMSNorm, GQA self-attention with RoPE, and a SwiGLU MLP. The members
differ only in switches of `LlamaConfig`: RoPE scaling ("linear", "llama3"), a sliding
window per layer (Mistral, Qwen2/3 with use_sliding_window), Q/K/V biases (Qwen2), per-head
RMSNorm of q and k before RoPE (Qwen3), tied input/output embeddings.

Weights load from HF checkpoints (`model.`-prefixed CausalLM keys or bare base-model keys)
and from the original Meta/Mistral layout (params.json + consolidated.safetensors). Q/K/V
and gate/up are fused into one matrix each at load time (entries of `KEYS`). The original
layout rotates interleaved pairs (2i, 2i+1) where HF rotates halves (i, i + D/2); HF's
conversion permutes the q/k rows to switch, kiln runs RoPE in the layout the weights have.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln.distributed import require_world
from kiln.io.config import check_divisible, config_bool, config_float, config_get, config_int, read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, as_dtype
from kiln.nn import (MLP, Attention, Concat, DecoderGraphs, Embedding, KeyTable, Layout, Linear, Module, RMSNorm,
                     Rope, RopeConfig, TransformerBlock, place_features, shard_params)
from kiln.nn.rope import ROPE_TYPES  # noqa: F401  (part of this module's face)
from kiln.runtime.generation import GenerationConfig
from kiln.runtime.language_model import CausalLM

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


DIM_MAX = 1 << 24   # no real model has a size or head count near this; bigger values are config damage

@dataclass(frozen=True)
class LlamaConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    rope_layout: str = "half"          # "interleaved" for the original Meta/Mistral weight layout
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False              # Qwen3: RMSNorm over each head of q and k before RoPE
    layer_windows: tuple[int | None, ...] = ()  # sliding window per layer; () = none anywhere
    max_position_embeddings: int = 2048

    @property
    def rotary_dim(self) -> int:
        return self.rope.rotary_dim(self.head_dim)

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else None

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "LlamaConfig":
        """From a HF config.json (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
        where = getattr(cfg, "path", "config.json")
        model_type = cfg.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"{where}: model_type {model_type!r} is not a Llama-family type {MODEL_TYPES}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: hidden_act {act!r} is not supported; the Llama family uses 'silu'")
        hidden, heads = config_int(cfg, "hidden_size", max=DIM_MAX), config_int(cfg, "num_attention_heads", max=DIM_MAX)
        kv_heads = config_int(cfg, "num_key_value_heads", max=DIM_MAX, default=heads)
        layers = config_int(cfg, "num_hidden_layers", max=DIM_MAX)
        check_divisible(cfg, "num_attention_heads", heads, "num_key_value_heads", kv_heads)
        if config_get(cfg, "head_dim", default=None) is None:
            check_divisible(cfg, "hidden_size", hidden, "num_attention_heads", heads)
        head_dim = config_int(cfg, "head_dim", max=DIM_MAX, default=hidden // heads)
        windows: tuple[int | None, ...] = ()
        if model_type == "mistral" and cfg.get("sliding_window") is not None:
            windows = (int(cfg["sliding_window"]),) * layers
        elif model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window") and cfg.get("sliding_window"):
            types = cfg.get("layer_types") or [
                "sliding_attention" if i >= cfg.get("max_window_layers", layers) else "full_attention"
                for i in range(layers)]
            if len(types) != layers:
                raise ConfigError(f"{where}: layer_types has {len(types)} entries for {layers} layers")
            windows = tuple(int(cfg["sliding_window"]) if t == "sliding_attention" else None for t in types)
        bias = bool(cfg.get("attention_bias", False))
        return cls(
            model_type=model_type, vocab_size=config_int(cfg, "vocab_size", max=DIM_MAX), hidden_size=hidden,
            intermediate_size=config_int(cfg, "intermediate_size", max=DIM_MAX), num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            rms_norm_eps=config_float(cfg, "rms_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
            rope=RopeConfig.from_hf(cfg, where),
            tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", default=False),
            qkv_bias=True if model_type == "qwen2" else bias and model_type != "mistral",
            o_bias=bias and model_type in ("llama", "qwen3"),
            mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",
            qk_norm=model_type == "qwen3", layer_windows=windows,
            max_position_embeddings=config_int(cfg, "max_position_embeddings", max=2**31 - 1, default=2048))

    @classmethod
    def from_meta_params(cls, params: Mapping[str, Any], where: str = "params.json") -> "LlamaConfig":
        """From the original Meta/Mistral params.json (dim, n_layers, n_heads, ...)."""
        def need(key):
            if key not in params:
                raise ConfigError(f"{where}: required field {key!r} not found")
            return params[key]

        dim, heads, layers = int(need("dim")), int(need("n_heads")), int(need("n_layers"))
        if "hidden_dim" in params:
            inter = int(params["hidden_dim"])
        else:  # Meta's FeedForward sizing rule
            multiple_of = int(params.get("multiple_of", 256))
            inter = int(2 * (4 * dim) / 3)
            if params.get("ffn_dim_multiplier") is not None:
                inter = int(float(params["ffn_dim_multiplier"]) * inter)
            inter = multiple_of * ((inter + multiple_of - 1) // multiple_of)
        vocab = int(need("vocab_size"))
        if vocab <= 0:
            raise ConfigError(f"{where}: vocab_size is {vocab}; set it to the tokenizer's vocabulary size")
        rope = RopeConfig(theta=float(params.get("rope_theta", 10000.0)))
        if params.get("use_scaled_rope"):  # Llama 3.1's fixed scaling
            rope = replace(rope, type="llama3", factor=float(params.get("rope_scaling_factor", 8.0)),
                           low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
        window = params.get("sliding_window")
        return cls(
            model_type="llama", vocab_size=vocab, hidden_size=dim, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=int(params.get("n_kv_heads") or heads),
            head_dim=int(params.get("head_dim") or dim // heads), rms_norm_eps=float(params.get("norm_eps", 1e-5)),
            rope=rope, rope_layout="interleaved", layer_windows=(int(window),) * layers if window else (),
            max_position_embeddings=int(params.get("max_seq_len", 2048)))


# ---- the network ---------------------------------------------------------------------------

class Llama(Module):
    """Token embedding, pre-norm blocks, final norm, LM head (tied to the embedding or not).

    With `tp_world` > 1, this rank's part of a tensor-parallel model: `cfg` has the local head
    counts and MLP width (`local_config`), and the attention output and MLP down projections
    are row-parallel (one all_reduce each per block); embeddings, norms and the head are replicated."""

    def __init__(self, cfg: LlamaConfig, dtype: str = "float32", tp_world: int = 1):
        super().__init__("", dtype)
        h, eps, dt = cfg.hidden_size, cfg.rms_norm_eps, self.dtype
        self.rope = Rope(cfg.rope, cfg.head_dim, cfg.rope_layout, dt)
        self.embed = Embedding("model.embed_tokens", cfg.vocab_size, h, dtype=dt)
        self.layers = [TransformerBlock(
            RMSNorm(f"model.layers.{i}.input_layernorm", h, eps, dtype=dt),
            Attention(f"model.layers.{i}.self_attn", h, cfg.num_attention_heads, cfg.num_key_value_heads,
                      cfg.head_dim, qkv_bias=cfg.qkv_bias, out_bias=cfg.o_bias, causal=True, window=cfg.window(i),
                      qk_norm_eps=eps if cfg.qk_norm else None, rope=self.rope, layer=i, dtype=dt),
            RMSNorm(f"model.layers.{i}.post_attention_layernorm", h, eps, dtype=dt),
            MLP(f"model.layers.{i}.mlp", h, cfg.intermediate_size, "silu", gated=True, bias=cfg.mlp_bias, dtype=dt))
            for i in range(cfg.num_hidden_layers)]
        for block in self.layers:
            block.attn.out.reduce_world = block.mlp.down.reduce_world = tp_world
        self.norm = RMSNorm("model.norm", h, eps, dtype=dt)
        self.lm_head = None if cfg.tie_word_embeddings else Linear("lm_head", h, cfg.vocab_size, dtype=dt)

    def __call__(self, g: Graph, ids, positions, cache, last_only: bool = False, features=None):
        """float32 logits of ids [B, S] at `positions`; the cache decides what attention sees.

        `features` (inputs_embeds, embeds_mask) replace the token embeddings where the mask is set."""
        x = place_features(g, self.embed(g, ids), features)
        tables = self.rope.tables(g, positions)
        for block in self.layers:
            x = block(g, x, rope_tables=tables, cache=cache)
        x = self.norm(g, x)
        if last_only:
            x = g.slice(x, axes=[1], starts=[x.shape[1] - 1], ends=[x.shape[1]])
        logits = self.embed.as_linear(g, x) if self.lm_head is None else self.lm_head(g, x)
        return logits if self.dtype == "float32" else g.cast(logits, dtype="float32")


def local_config(cfg: LlamaConfig, world: int) -> LlamaConfig:
    """One rank's share of a tensor-parallel model: heads, KV heads and MLP width divided by `world`."""
    for field_name, n in (("num_attention_heads", cfg.num_attention_heads),
                          ("num_key_value_heads", cfg.num_key_value_heads), ("intermediate_size", cfg.intermediate_size)):
        if n % world:
            raise ConfigError(f"tensor_parallel={world}: {field_name} ({n}) does not split into {world} equal parts")
    return replace(cfg, num_attention_heads=cfg.num_attention_heads // world,
                   num_key_value_heads=cfg.num_key_value_heads // world,
                   intermediate_size=cfg.intermediate_size // world)


class LlamaGraphs(DecoderGraphs):
    """The prefill and decode graphs of one config and dtype (the `DecoderGraphs` of CausalLM).

    `tp_world` > 1: the graphs of one tensor-parallel rank (`config` is the full model's; the KV cache
    holds this rank's KV heads)."""

    def __init__(self, config: LlamaConfig, dtype: str = "float32", tp_world: int = 1):
        self.full_config, self.tp_world = config, tp_world
        config = local_config(config, tp_world) if tp_world > 1 else config
        super().__init__(config, Llama(config, as_dtype(dtype).name, tp_world), dtype)


# ---- checkpoint keys --------------------------------------------------------------------------

KEYS = KeyTable(
    "Llama-family",
    Layout("hf", "embed_tokens.weight", strip=("model.",), implies={"rope_layout": "half"}, keys={
        "model.layers.{i}.self_attn.qkv_proj.{kind}": Concat(*(f"layers.{{i}}.self_attn.{p}_proj.{{kind}}"
                                                              for p in "qkv")),
        "model.layers.{i}.mlp.gate_up_proj.{kind}": Concat("layers.{i}.mlp.gate_proj.{kind}",
                                                           "layers.{i}.mlp.up_proj.{kind}"),
        "model.layers.{i}.{name}": "layers.{i}.{name}",
        "model.{name}": "{name}",
        "lm_head.weight": "lm_head.weight",
    }, ignore=("lm_head.weight", "*rotary_emb.inv_freq")),  # a tied model ignores a stored head, as HF does
    Layout("meta", "tok_embeddings.weight", implies={"rope_layout": "interleaved"}, keys={
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight",
        "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
        "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
        "model.layers.{i}.self_attn.qkv_proj.{kind}": Concat(*(f"layers.{{i}}.attention.w{p}.{{kind}}" for p in "qkv")),
        "model.layers.{i}.self_attn.o_proj.{kind}": "layers.{i}.attention.wo.{kind}",
        "model.layers.{i}.mlp.gate_up_proj.{kind}": Concat("layers.{i}.feed_forward.w1.{kind}",
                                                           "layers.{i}.feed_forward.w3.{kind}"),
        "model.layers.{i}.mlp.down_proj.{kind}": "layers.{i}.feed_forward.w2.{kind}",
    }, ignore=("rope.freqs",)))


def llama_params(weights: WeightMap, cfg: LlamaConfig, dtype: str = "float32", layers=None) -> dict[str, np.ndarray]:
    """Graph parameters from a checkpoint (HF or original layout): shapes checked, Q/K/V and gate/up fused.

    Warns about checkpoint tensors that were not used. `layers` optionally wraps the
    layer range (e.g. in a progress bar)."""
    layers = range(cfg.num_hidden_layers) if layers is None else layers
    return KEYS.load(weights, Llama(cfg, dtype).params(), layers=layers)


# ---- loading --------------------------------------------------------------------------------

def read_llama_config(directory: Path) -> tuple[LlamaConfig, dict, str]:
    """(config, raw config dict, weights file name) from config.json, or from params.json (original layout)."""
    if (directory / "config.json").is_file():
        raw = read_config(directory)
        return LlamaConfig.from_hf(raw), dict(raw), "model.safetensors"
    if (directory / "params.json").is_file():
        raw = read_config(directory, filename="params.json")
        return LlamaConfig.from_meta_params(raw, str(directory / "params.json")), dict(raw), "consolidated.safetensors"
    raise ConfigError(f"{directory}: no config.json (HF layout) or params.json (original layout)")


def load_llama(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
               progress: bool = False, tensor_parallel: int = 1) -> CausalLM:
    """A Llama-family checkpoint directory as a CausalLM (weights, tokenizer, generation defaults)."""
    d = Path(path)
    cfg, raw, filename = read_llama_config(d)
    weights = WeightMap(load_checkpoint_dir(d, filename=filename), source=str(d))
    tokenizer = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    return causal_lm_from_weights(cfg, weights, tokenizer=tokenizer, generation_config=GenerationConfig.from_dir(d, raw),
                                  device=device, dtype=dtype, optimize=optimize, progress=progress, name=str(d),
                                  tensor_parallel=tensor_parallel)


def causal_lm_from_weights(cfg: LlamaConfig, weights: WeightMap, *, tokenizer=None,
                           generation_config: GenerationConfig | None = None, device: str = "cpu",
                           dtype: str = "float32", optimize: bool = True, progress: bool = False,
                           name: str = "model", tensor_parallel: int = 1) -> CausalLM:
    """A CausalLM from a parsed config and checkpoint tensors in HF or original key layout.

    The entry point for every weight source (safetensors directories, GGUF files, ...).
    `tensor_parallel=N` (under torchrun, N ranks): this rank's slice of the model (kiln.nn.parallel)."""
    layout, view = KEYS.detect(weights)
    cfg = replace(cfg, **layout.implies)
    if layout.name == "meta" and not view.has("output.weight"):  # the original layout stores no tied head
        cfg = replace(cfg, tie_word_embeddings=True)
    layers = range(cfg.num_hidden_layers)
    if progress:
        from tqdm import tqdm

        layers = tqdm(layers, desc="loading weights", unit="layer", leave=False)
    params = llama_params(weights, cfg, dtype, layers=layers)
    graphs = LlamaGraphs(cfg, dtype, tensor_parallel)
    if tensor_parallel > 1:
        rank = require_world(tensor_parallel, f"{name} with tensor_parallel={tensor_parallel}")
        params = shard_params(params, Llama(cfg, dtype).params(), graphs.model.params(), rank, tensor_parallel)
    return CausalLM(graphs, params, tokenizer=tokenizer, generation_config=generation_config,
                    device=device, dtype=dtype, optimize=optimize, name=name)
