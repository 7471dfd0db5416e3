"""Llama-architecture decoder LMs: Llama 2/3 and SmolLM2, Mistral, Qwen2, Qwen3.

One graph serves the family; the members differ only in switches of `LlamaConfig`:
RoPE scaling ("linear", "llama3"), a sliding attention window per layer (Mistral,
Qwen2/3 with use_sliding_window), Q/K/V biases (Qwen2), per-head RMSNorm of q and k
before RoPE (Qwen3), tied or untied input/output embeddings.

Weights load from HF checkpoints (config.json + model.safetensors, sharded or not;
`model.`-prefixed CausalLM keys or bare base-model keys) and from the original
Meta/Mistral layout (params.json + consolidated.safetensors: `tok_embeddings`,
`attention.wq`, `feed_forward.w1`, ...). Q/K/V and gate/up are fused into one matrix
each at load time so a block runs two input projections instead of five. The
original layout rotates interleaved pairs (2i, 2i+1) where HF rotates halves
(i, i + D/2); HF's conversion permutes the q/k rows to switch, kiln instead runs
RoPE in the layout the weights were trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln.io.config import config_get, read_config
from kiln.io.errors import CheckpointError, ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, as_dtype
from kiln.runtime.generation import GenerationConfig
from kiln.runtime.kv_cache import present_name, past_name
from kiln.runtime.language_model import CausalLM

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings (HF `rope_parameters`)."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    partial_rotary_factor: float = 1.0

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """float32 [rot/2] inverse frequencies, computed as HF's rope init functions do (in float32)."""
        dim = int(head_dim * self.partial_rotary_factor)
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv = (np.float32(1.0) / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.type == "linear":
            return (inv / np.float32(self.factor)).astype(np.float32)
        if self.type == "llama3":
            old_ctx = np.float32(self.original_max_position_embeddings)
            low_wavelen = old_ctx / np.float32(self.low_freq_factor)
            high_wavelen = old_ctx / np.float32(self.high_freq_factor)
            wavelen = np.float32(2 * math.pi) / inv
            scaled = np.where(wavelen > low_wavelen, inv / np.float32(self.factor), inv)
            smooth = (old_ctx / wavelen - np.float32(self.low_freq_factor)) / (
                np.float32(self.high_freq_factor) - np.float32(self.low_freq_factor))
            smoothed = (1 - smooth) * scaled / np.float32(self.factor) + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        return inv


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
        return int(self.head_dim * self.rope.partial_rotary_factor)

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else None

    # ---- parsing ---------------------------------------------------------------------
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
        hidden = int(config_get(cfg, "hidden_size"))
        heads = int(config_get(cfg, "num_attention_heads"))
        kv_heads = int(config_get(cfg, "num_key_value_heads", default=heads))
        head_dim = int(config_get(cfg, "head_dim", default=hidden // heads))
        layers = int(config_get(cfg, "num_hidden_layers"))
        if heads % kv_heads:
            raise ConfigError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
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
            model_type=model_type,
            vocab_size=int(config_get(cfg, "vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(config_get(cfg, "intermediate_size")),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(config_get(cfg, "rms_norm_eps", default=1e-6)),
            rope=_rope_from_hf(cfg, where),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else bias and model_type != "mistral",
            o_bias=bias and model_type in ("llama", "qwen3"),
            mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",
            qk_norm=model_type == "qwen3",
            layer_windows=windows,
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
        )

    @classmethod
    def from_meta_params(cls, params: Mapping[str, Any], where: str = "params.json") -> "LlamaConfig":
        """From the original Meta/Mistral params.json (dim, n_layers, n_heads, ...)."""
        def need(key):
            if key not in params:
                raise ConfigError(f"{where}: required field {key!r} not found")
            return params[key]

        dim, heads, layers = int(need("dim")), int(need("n_heads")), int(need("n_layers"))
        kv_heads = int(params.get("n_kv_heads") or heads)
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
            sf = params.get("rope_scaling_factor", 8.0)
            rope = replace(rope, type="llama3", factor=float(sf), low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)
        window = params.get("sliding_window")
        return cls(
            model_type="llama", vocab_size=vocab, hidden_size=dim, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            head_dim=int(params.get("head_dim") or dim // heads), rms_norm_eps=float(params.get("norm_eps", 1e-5)),
            rope=rope, rope_layout="interleaved",
            layer_windows=(int(window),) * layers if window else (),
            max_position_embeddings=int(params.get("max_seq_len", 2048)))


def _rope_from_hf(cfg: Mapping[str, Any], where: str) -> RopeConfig:
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rtype = params.get("rope_type", params.get("type", "default"))
    if rtype not in ROPE_TYPES:
        raise ConfigError(f"{where}: rope type {rtype!r} is not supported; expected one of {ROPE_TYPES}")
    partial = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0)
    rope = RopeConfig(theta=float(theta), type=rtype, partial_rotary_factor=partial)
    if rtype in ("linear", "llama3"):
        if "factor" not in params:
            raise ConfigError(f"{where}: rope type {rtype!r} needs a 'factor'")
        rope = replace(rope, factor=float(params["factor"]))
    if rtype == "llama3":
        missing = [k for k in ("low_freq_factor", "high_freq_factor") if k not in params]
        if missing:
            raise ConfigError(f"{where}: rope type 'llama3' needs {missing}")
        orig = params.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
        if orig is None:
            raise ConfigError(f"{where}: rope type 'llama3' needs 'original_max_position_embeddings'")
        rope = replace(rope, low_freq_factor=float(params["low_freq_factor"]),
                       high_freq_factor=float(params["high_freq_factor"]),
                       original_max_position_embeddings=int(orig))
    return rope


# ---- graphs ----------------------------------------------------------------------------

class LlamaGraphs:
    """Builds the prefill and decode graphs of one config and dtype (the `DecoderGraphs` of CausalLM)."""

    def __init__(self, config: LlamaConfig, dtype: str = "float32"):
        self.config, self.dtype = config, as_dtype(dtype).name
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.vocab_size = config.vocab_size
        self.inv_freq = config.rope.inv_freq(config.head_dim)

    def prefill_graph(self, batch: int, seq: int, last_only: bool = False) -> Graph:
        """Prompt of S tokens, empty cache: logits and the prompt's keys/values (present.*)."""
        g = Graph(f"{self.config.model_type}_prefill_b{batch}_s{seq}")
        ids = g.input("input_ids", (batch, seq), "int64")
        mask = g.input("attention_mask", (batch, seq), "int64")
        pos = g.input("position_ids", (batch, seq), "int64")
        keep = g.reshape(g.greater(mask, g.scalar(0, "int64")), shape=[batch, 1, 1, seq])

        def attend(i, q, k, v):
            g.output(present_name(i, "key"), k)
            g.output(present_name(i, "value"), v)
            return g.attention(q, k, v, keep, causal=True, window=self.config.window(i))

        x = _decoder(g, self.config, self.dtype, self.inv_freq, ids, pos, attend)
        if last_only:
            x = g.slice(x, axes=[1], starts=[seq - 1], ends=[seq])
        g.output("logits", _lm_head(g, self.config, self.dtype, x))
        return g

    def decode_graph(self, batch: int, max_len: int) -> Graph:
        """One new token per row against a static cache of max_len slots; writes its k/v at cache_position."""
        g = Graph(f"{self.config.model_type}_decode_b{batch}_l{max_len}")
        cfg = self.config
        ids = g.input("input_ids", (batch, 1), "int64")
        pos = g.input("position_ids", (batch, 1), "int64")
        slot = g.input("cache_position", (1,), "int64")
        mask = g.input("attention_mask", (batch, max_len), "int64")
        kv_shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        slots = g.constant(np.arange(max_len, dtype=np.int64), name="cache_slots")
        write_here = g.reshape(g.equal(slots, slot), shape=[1, 1, max_len, 1])
        visible = g.logical_and(g.greater(mask, g.scalar(0, "int64")), g.less_equal(slots, slot))
        masks: dict[int | None, Any] = {}

        def mask_for(window):
            if window not in masks:
                m = visible
                if window is not None:  # HF: key slot j is visible from slot p when p - j < window
                    m = g.logical_and(m, g.less(g.sub(slot, slots), g.scalar(window, "int64")))
                masks[window] = g.reshape(m, shape=[batch, 1, 1, max_len])
            return masks[window]

        def attend(i, q, k, v):
            k_all = g.where(write_here, k, g.input(past_name(i, "key"), kv_shape, self.dtype))
            v_all = g.where(write_here, v, g.input(past_name(i, "value"), kv_shape, self.dtype))
            g.output(present_name(i, "key"), k_all)
            g.output(present_name(i, "value"), v_all)
            return g.attention(q, k_all, v_all, mask_for(cfg.window(i)))

        x = _decoder(g, cfg, self.dtype, self.inv_freq, ids, pos, attend)
        g.output("logits", _lm_head(g, cfg, self.dtype, x))
        return g


def _decoder(g: Graph, cfg: LlamaConfig, dt: str, inv_freq: np.ndarray, ids, pos, attend):
    """Embedding and the decoder blocks up to the final norm; `attend(layer, q, k, v)` does attention."""
    b, s = ids.shape
    h, nh, nkv, hd, inter = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                             cfg.intermediate_size)
    eps = cfg.rms_norm_eps

    def p(name, shape):
        return g.parameter(name, shape, dt)

    x = g.embedding(ids, p("model.embed_tokens.weight", (cfg.vocab_size, h)))
    # RoPE tables from the explicit positions: cos/sin(pos * inv_freq), [B, S, rot/2]
    freqs = g.reshape(g.cast(pos, dtype="float32"), shape=[b, s, 1]) * g.constant(inv_freq, name="rope_inv_freq")
    cos, sin = g.cos(freqs), g.sin(freqs)
    if dt != "float32":
        cos, sin = g.cast(cos, dtype=dt), g.cast(sin, dtype=dt)

    def heads(t, n):
        return g.reshape(t, shape=[b, s, n, hd])

    def to_bhsd(t):
        return g.transpose(t, perm=[0, 2, 1, 3])

    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        a = g.rms_norm(x, p(pre + "input_layernorm.weight", (h,)), eps=eps)
        qkv_out = (nh + 2 * nkv) * hd
        qkv = g.linear(a, p(pre + "self_attn.qkv_proj.weight", (qkv_out, h)),
                       p(pre + "self_attn.qkv_proj.bias", (qkv_out,)) if cfg.qkv_bias else None)
        q, k, v = g.split(qkv, sizes=[nh * hd, nkv * hd, nkv * hd], axis=-1)
        q, k, v = heads(q, nh), heads(k, nkv), heads(v, nkv)
        if cfg.qk_norm:
            q = g.rms_norm(q, p(pre + "self_attn.q_norm.weight", (hd,)), eps=eps)
            k = g.rms_norm(k, p(pre + "self_attn.k_norm.weight", (hd,)), eps=eps)
        q = g.rope(to_bhsd(q), cos, sin, layout=cfg.rope_layout)
        k = g.rope(to_bhsd(k), cos, sin, layout=cfg.rope_layout)
        o = attend(i, q, k, to_bhsd(v))
        o = g.reshape(g.transpose(o, perm=[0, 2, 1, 3]), shape=[b, s, nh * hd])
        x = x + g.linear(o, p(pre + "self_attn.o_proj.weight", (h, nh * hd)),
                         p(pre + "self_attn.o_proj.bias", (h,)) if cfg.o_bias else None)
        m = g.rms_norm(x, p(pre + "post_attention_layernorm.weight", (h,)), eps=eps)
        gate_up = g.linear(m, p(pre + "mlp.gate_up_proj.weight", (2 * inter, h)),
                           p(pre + "mlp.gate_up_proj.bias", (2 * inter,)) if cfg.mlp_bias else None)
        gate, up = g.split(gate_up, sizes=[inter, inter], axis=-1)
        x = x + g.linear(g.swiglu(gate, up), p(pre + "mlp.down_proj.weight", (h, inter)),
                         p(pre + "mlp.down_proj.bias", (h,)) if cfg.mlp_bias else None)
    return g.rms_norm(x, p("model.norm.weight", (h,)), eps=eps)


def _lm_head(g: Graph, cfg: LlamaConfig, dt: str, x):
    name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    w = g.parameters.get(name) or g.parameter(name, (cfg.vocab_size, cfg.hidden_size), dt)
    logits = g.linear(x, w)
    return logits if dt == "float32" else g.cast(logits, dtype="float32")


# ---- weights ------------------------------------------------------------------------------

# checkpoint key (per layer, after the `model.` prefix) in each layout, by role
_HF_KEYS = {
    "embed": "embed_tokens.weight", "norm": "norm.weight", "lm_head": "lm_head.weight",
    "attn_norm": "layers.{i}.input_layernorm.weight", "mlp_norm": "layers.{i}.post_attention_layernorm.weight",
    "q": "layers.{i}.self_attn.q_proj", "k": "layers.{i}.self_attn.k_proj", "v": "layers.{i}.self_attn.v_proj",
    "o": "layers.{i}.self_attn.o_proj", "q_norm": "layers.{i}.self_attn.q_norm.weight",
    "k_norm": "layers.{i}.self_attn.k_norm.weight", "gate": "layers.{i}.mlp.gate_proj",
    "up": "layers.{i}.mlp.up_proj", "down": "layers.{i}.mlp.down_proj",
}
_META_KEYS = {
    "embed": "tok_embeddings.weight", "norm": "norm.weight", "lm_head": "output.weight",
    "attn_norm": "layers.{i}.attention_norm.weight", "mlp_norm": "layers.{i}.ffn_norm.weight",
    "q": "layers.{i}.attention.wq", "k": "layers.{i}.attention.wk", "v": "layers.{i}.attention.wv",
    "o": "layers.{i}.attention.wo", "q_norm": None, "k_norm": None, "gate": "layers.{i}.feed_forward.w1",
    "up": "layers.{i}.feed_forward.w3", "down": "layers.{i}.feed_forward.w2",
}


def detect_layout(weights: WeightMap) -> tuple[WeightMap, str]:
    """("hf" | "meta") and a view whose keys follow that layout's names (the HF `model.` prefix removed)."""
    if weights.has("model.embed_tokens.weight") or weights.has("embed_tokens.weight"):
        return weights.strip_prefix("model."), "hf"
    if weights.has("tok_embeddings.weight"):
        return weights, "meta"
    raise CheckpointError(
        f"{weights.source}: not a Llama-family checkpoint: expected 'model.embed_tokens.weight' (HF) or "
        f"'tok_embeddings.weight' (original layout); found keys such as {weights.keys()[:5]}")


def llama_params(weights: WeightMap, cfg: LlamaConfig, dtype: str = "float32", layers=None) -> dict[str, np.ndarray]:
    """Graph parameters from a checkpoint (HF or original layout): shapes checked, Q/K/V and gate/up fused.

    Warns about checkpoint tensors that were not used. `layers` optionally wraps the
    layer range (e.g. in a progress bar).
    """
    weights, layout = detect_layout(weights)
    keys = _HF_KEYS if layout == "hf" else _META_KEYS
    dt = as_dtype(dtype).np_dtype
    h, nh, nkv, hd, inter, v = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                cfg.intermediate_size, cfg.vocab_size)
    out: dict[str, np.ndarray] = {}
    out["model.embed_tokens.weight"] = weights.take(keys["embed"], shape=(v, h), dtype=dt)
    for i in (layers if layers is not None else range(cfg.num_hidden_layers)):
        k = {role: name.format(i=i) for role, name in keys.items() if name is not None}
        pre = f"model.layers.{i}."
        out[pre + "input_layernorm.weight"] = weights.take(k["attn_norm"], shape=(h,), dtype=dt)
        out[pre + "post_attention_layernorm.weight"] = weights.take(k["mlp_norm"], shape=(h,), dtype=dt)
        qkv_out = (nh + 2 * nkv) * hd
        qkv = [k["q"], k["k"], k["v"]]
        _check_parts(weights, [n + ".weight" for n in qkv], [(nh * hd, h), (nkv * hd, h), (nkv * hd, h)])
        out[pre + "self_attn.qkv_proj.weight"] = weights.take_concat(
            [n + ".weight" for n in qkv], axis=0, shape=(qkv_out, h), dtype=dt)
        if cfg.qkv_bias:
            _check_parts(weights, [n + ".bias" for n in qkv], [(nh * hd,), (nkv * hd,), (nkv * hd,)])
            out[pre + "self_attn.qkv_proj.bias"] = weights.take_concat(
                [n + ".bias" for n in qkv], axis=0, shape=(qkv_out,), dtype=dt)
        out[pre + "self_attn.o_proj.weight"] = weights.take(k["o"] + ".weight", shape=(h, nh * hd), dtype=dt)
        if cfg.o_bias:
            out[pre + "self_attn.o_proj.bias"] = weights.take(k["o"] + ".bias", shape=(h,), dtype=dt)
        if cfg.qk_norm:
            if layout != "hf":
                raise CheckpointError(f"{weights.source}: q/k norms need HF key names")
            out[pre + "self_attn.q_norm.weight"] = weights.take(k["q_norm"], shape=(hd,), dtype=dt)
            out[pre + "self_attn.k_norm.weight"] = weights.take(k["k_norm"], shape=(hd,), dtype=dt)
        gate_up = [k["gate"] + ".weight", k["up"] + ".weight"]
        _check_parts(weights, gate_up, [(inter, h), (inter, h)])
        out[pre + "mlp.gate_up_proj.weight"] = weights.take_concat(gate_up, axis=0, shape=(2 * inter, h), dtype=dt)
        out[pre + "mlp.down_proj.weight"] = weights.take(k["down"] + ".weight", shape=(h, inter), dtype=dt)
        if cfg.mlp_bias:
            gate_up_b = [k["gate"] + ".bias", k["up"] + ".bias"]
            _check_parts(weights, gate_up_b, [(inter,), (inter,)])
            out[pre + "mlp.gate_up_proj.bias"] = weights.take_concat(gate_up_b, axis=0, shape=(2 * inter,), dtype=dt)
            out[pre + "mlp.down_proj.bias"] = weights.take(k["down"] + ".bias", shape=(h,), dtype=dt)
    out["model.norm.weight"] = weights.take(keys["norm"], shape=(h,), dtype=dt)
    if cfg.tie_word_embeddings:
        if weights.has(keys["lm_head"]):  # as HF: a tied model ignores a stored output matrix
            weights.mark_used(keys["lm_head"])
    else:
        out["lm_head.weight"] = weights.take(keys["lm_head"], shape=(v, h), dtype=dt)
    ignore = [n for n in weights.keys() if n.endswith("rotary_emb.inv_freq") or n == "rope.freqs"]
    weights.warn_unused(ignore=ignore)
    return out


def _check_parts(weights: WeightMap, names: list[str], shapes: list[tuple]) -> None:
    """Check each part before fusing, so a wrong shape names the tensor rather than the concatenation."""
    for n, shape in zip(names, shapes):
        found = weights.shape_of(n)
        if found != tuple(shape):
            raise CheckpointError(f"{weights.source}: tensor '{n}' has shape {found}, expected {tuple(shape)}")


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
               progress: bool = False) -> CausalLM:
    """A Llama-family checkpoint directory as a CausalLM (weights, tokenizer, generation defaults)."""
    d = Path(path)
    cfg, raw, filename = read_llama_config(d)
    weights = WeightMap(load_checkpoint_dir(d, filename=filename), source=str(d))
    tokenizer = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    return causal_lm_from_weights(cfg, weights, tokenizer=tokenizer, generation_config=GenerationConfig.from_dir(d, raw),
                                  device=device, dtype=dtype, optimize=optimize, progress=progress, name=str(d))


def causal_lm_from_weights(cfg: LlamaConfig, weights: WeightMap, *, tokenizer=None,
                           generation_config: GenerationConfig | None = None, device: str = "cpu",
                           dtype: str = "float32", optimize: bool = True, progress: bool = False,
                           name: str = "model") -> CausalLM:
    """A CausalLM from a parsed config and checkpoint tensors in HF or original key layout.

    The entry point for every weight source (safetensors directories, GGUF files, ...)."""
    _, layout = detect_layout(weights)
    cfg = replace(cfg, rope_layout="interleaved" if layout == "meta" else "half")
    if layout == "meta" and not weights.has("output.weight"):
        cfg = replace(cfg, tie_word_embeddings=True)
    layers = range(cfg.num_hidden_layers)
    if progress:
        from tqdm import tqdm

        layers = tqdm(layers, desc="loading weights", unit="layer", leave=False)
    params = llama_params(weights, cfg, dtype, layers=layers)
    return CausalLM(LlamaGraphs(cfg, dtype), params, tokenizer=tokenizer, generation_config=generation_config,
                    device=device, dtype=dtype, optimize=optimize, name=name)
