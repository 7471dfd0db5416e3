"""Whisper speech recognition (HF `WhisperForConditionalGeneration` checkpoints).

Two kinds of static graphs, compiled per shape and cached:

* the **encoder** for a batch size: two conv1d + GELU over the log-mel frames, the
  checkpoint's position table (sinusoidal in every released model), pre-LN blocks, a final
  LayerNorm; it also projects its output once into every decoder layer's cross-attention
  K/V (one fused matmul for all layers), so decoding never recomputes them;
* the **decoder** for (utterances, rows per utterance, new tokens, cache size): token +
  learned position embeddings, pre-LN blocks of causal self-attention over a bucketed cache
  held as graph state (`kiln.nn.SlotCache`), cross-attention over the precomputed K/V
  (beams of one utterance share it as extra query rows) and a GELU MLP, then the output
  projection tied to the token embedding.

This file is the network and its checkpoint key table; the loaded model and its decoding
sessions are in :mod:`kiln.models.whisper_runtime`, decoding (prompts, language detection,
greedy / beam search, timestamps, long-form audio) in :mod:`kiln.models.whisper_decoding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiln.io.config import check_divisible, config_bool, config_int, read_config
from kiln.io.errors import CheckpointError
from kiln.io.hub import resolve_model_path
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, as_dtype
from kiln.nn import (MLP, Attention, Concat, Conv, CrossAttention, Embedding, KeyTable, LayerNorm, SlotCache,
                     Layout, Linear, Module, OrMake, TransformerBlock, Zeros, split_heads)
from kiln.nn.mlp import HF_ACTIVATIONS, activation

LAYER_NORM_EPS = 1e-5  # HF Whisper uses nn.LayerNorm's default
CONV_STRIDE = 2  # conv1 stride 1 x conv2 stride 2: mel frames per encoder position


@dataclass(frozen=True)
class WhisperConfig:
    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_layers: int
    decoder_attention_heads: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    activation_function: str
    tie_word_embeddings: bool
    decoder_start_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def from_dict(cls, cfg: dict) -> WhisperConfig:
        where = getattr(cfg, "path", "config.json")
        act = cfg.get("activation_function", "gelu")
        if act not in HF_ACTIVATIONS:
            raise CheckpointError(f"{where}: Whisper activation_function {act!r} is not supported; "
                                  f"expected one of {sorted(HF_ACTIVATIONS)}")
        size = lambda name, **kw: config_int(cfg, name, max=1 << 24, **kw)  # noqa: E731
        c = cls(size("vocab_size"), size("num_mel_bins", default=80), size("d_model"),
                size("encoder_layers"), size("encoder_attention_heads"), size("encoder_ffn_dim"),
                size("decoder_layers"), size("decoder_attention_heads"), size("decoder_ffn_dim"),
                size("max_source_positions", default=1500), size("max_target_positions", default=448), act,
                config_bool(cfg, "tie_word_embeddings", default=True),
                config_int(cfg, "decoder_start_token_id", min=0, default=None),
                cfg.get("eos_token_id"), config_int(cfg, "pad_token_id", min=0, default=None))
        for heads, what in ((c.encoder_attention_heads, "encoder"), (c.decoder_attention_heads, "decoder")):
            check_divisible(cfg, "d_model", c.d_model, f"{what}_attention_heads", heads)
        return c

    @property
    def num_frames(self) -> int:
        """Mel frames of one 30 s window: what the encoder takes (3000 for every released size)."""
        return self.max_source_positions * CONV_STRIDE


# ---- the network ----------------------------------------------------------------

def _block(cfg: WhisperConfig, pre: str, heads: int, ffn: int, dt: str, layer: int, decoder: bool):
    """Pre-LN block: self-attention (causal in the decoder) [, cross-attention over the encoder], GELU MLP."""
    d, scale = cfg.d_model, (cfg.d_model // heads) ** -0.5
    return TransformerBlock(
        LayerNorm(f"{pre}.self_attn_layer_norm", d, LAYER_NORM_EPS, dtype=dt),
        Attention(f"{pre}.self_attn", d, heads, qkv_bias=True, out_bias=True, causal=decoder, scale=scale, layer=layer,
                  names={"qkv": "qkv", "out": "out_proj"}, dtype=dt),
        LayerNorm(f"{pre}.final_layer_norm", d, LAYER_NORM_EPS, dtype=dt),
        MLP(pre, d, ffn, HF_ACTIVATIONS[cfg.activation_function], bias=True, names={"up": "fc1", "down": "fc2"},
            dtype=dt),
        cross_norm=LayerNorm(f"{pre}.encoder_attn_layer_norm", d, LAYER_NORM_EPS, dtype=dt) if decoder else None,
        cross=CrossAttention(f"{pre}.encoder_attn", d, heads, kv_proj=False, scale=scale, dtype=dt) if decoder else None)


class WhisperEncoder(Module):
    """Two conv1d + activation (GELU) over the log-mel frames, the position table, pre-LN blocks, a final LayerNorm;
    then every decoder layer's cross-attention K/V in one matmul (`cross_kv`)."""

    def __init__(self, cfg: WhisperConfig, dtype="float32"):
        super().__init__("", dtype)
        d, dt, self.cfg = cfg.d_model, self.dtype, cfg
        self.act = HF_ACTIVATIONS[cfg.activation_function]
        self.conv1 = Conv("encoder.conv1", cfg.num_mel_bins, d, 3, padding=1, dtype=dt)
        self.conv2 = Conv("encoder.conv2", d, d, 3, stride=2, padding=1, dtype=dt)
        self.positions = Embedding("encoder.embed_positions", cfg.max_source_positions, d, dtype=dt)
        self.layers = [_block(cfg, f"encoder.layers.{i}", cfg.encoder_attention_heads, cfg.encoder_ffn_dim, dt, i,
                              decoder=False) for i in range(cfg.encoder_layers)]
        self.norm = LayerNorm("encoder.layer_norm", d, LAYER_NORM_EPS, dtype=dt)
        self.cross_kv = Linear("decoder.cross_kv", d, cfg.decoder_layers * 2 * d, bias=True,
                               parts=(d,) * (2 * cfg.decoder_layers), dtype=dt)

    def __call__(self, g: Graph, feats):
        """(last_hidden_state [B, 1500, d], [(cross K, cross V) per decoder layer] [B, heads, 1500, hd])."""
        x = activation(g, self.conv2(g, activation(g, self.conv1(g, feats), self.act)), self.act)
        n_pos, d = self.positions.num, self.positions.dim
        x = g.transpose(x, perm=[0, 2, 1]) + g.reshape(self.positions.weight(g), shape=[1, n_pos, d])
        for block in self.layers:
            x = block(g, x)
        x = self.norm(g, x)
        parts = g.split(self.cross_kv(g, x), sizes=list(self.cross_kv.parts), axis=-1)
        nh = self.cfg.decoder_attention_heads
        heads = [split_heads(g, t, nh, d // nh) for t in parts]
        return x, list(zip(heads[0::2], heads[1::2]))


class WhisperDecoder(Module):
    """Token + learned position embeddings, pre-LN blocks (causal self-attention over a cache,
    cross-attention, MLP), a final LayerNorm, the output projection (tied to the token embedding)."""

    def __init__(self, cfg: WhisperConfig, dtype="float32"):
        super().__init__("", dtype)
        d, dt = cfg.d_model, self.dtype
        self.embed = Embedding("decoder.embed_tokens", cfg.vocab_size, d, dtype=dt)
        self.positions = Embedding("decoder.embed_positions", cfg.max_target_positions, d, dtype=dt)
        self.layers = [_block(cfg, f"decoder.layers.{i}", cfg.decoder_attention_heads, cfg.decoder_ffn_dim, dt, i,
                              decoder=True) for i in range(cfg.decoder_layers)]
        self.norm = LayerNorm("decoder.layer_norm", d, LAYER_NORM_EPS, dtype=dt)
        self.proj_out = None if cfg.tie_word_embeddings else Linear("proj_out", d, cfg.vocab_size, dtype=dt)

    def __call__(self, g: Graph, ids, positions, memory, cache, group: int = 1):
        x = self.embed(g, ids) + self.positions(g, positions)
        for block, kv in zip(self.layers, memory):
            x = block(g, x, memory=kv, group=group, cache=cache)
        x = self.norm(g, x)
        return self.embed.as_linear(g, x) if self.proj_out is None else self.proj_out(g, x)


def build_encoder_graph(cfg: WhisperConfig, batch: int, dtype="float32") -> Graph:
    """input_features [B, n_mels, 3000] -> last_hidden_state [B, 1500, d] and every decoder
    layer's cross-attention K/V (``cross_k.{i}``, ``cross_v.{i}``: [B, heads, 1500, head_dim])."""
    dt = as_dtype(dtype).name
    g = Graph(f"whisper_encoder_b{batch}")
    feats = g.input("input_features", (batch, cfg.num_mel_bins, cfg.num_frames), dt)
    x, cross = WhisperEncoder(cfg, dt)(g, feats)
    g.output("last_hidden_state", x)
    for i, (k, v) in enumerate(cross):
        g.output(f"cross_k.{i}", k)
        g.output(f"cross_v.{i}", v)
    return g


def build_decoder_graph(cfg: WhisperConfig, batch: int, group: int, seq: int, cache: int, dtype="float32") -> Graph:
    """One decoder pass over `seq` new tokens for `batch` utterances x `group` hypotheses each.

    Inputs: ``input_ids`` [rows, seq] (rows = batch * group, utterance-major), ``positions`` [seq],
    ``cache_position`` [1] (the slot of the first new token) and per layer ``cross_k.{i}`` /
    ``cross_v.{i}`` [batch, heads, 1500, head_dim]. States: the self-attention cache
    ``cache.{i}.key`` / ``cache.{i}.value`` [rows, heads, cache, head_dim], where the new tokens'
    K/V are written; token t attends to the slots up to its own. Output: ``logits`` [rows, seq, vocab].
    """
    dt = as_dtype(dtype).name
    nh, rows = cfg.decoder_attention_heads, batch * group
    hd = cfg.d_model // nh
    g = Graph(f"whisper_decoder_b{batch}_g{group}_s{seq}_c{cache}")
    ids = g.input("input_ids", (rows, seq), "int64")
    positions = g.input("positions", (seq,), "int64")
    self_cache = SlotCache(g, rows, seq, cache, nh, hd, dt)
    kv_shape = (batch, nh, cfg.max_source_positions, hd)
    memory = [(g.input(f"cross_k.{i}", kv_shape, dt), g.input(f"cross_v.{i}", kv_shape, dt))
              for i in range(cfg.decoder_layers)]
    g.output("logits", WhisperDecoder(cfg, dt)(g, ids, positions, memory, self_cache, group))
    return g


# ---- weights ------------------------------------------------------------------

def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The encoder's sinusoidal position table (what released checkpoints store as a weight)."""
    if channels % 2:
        raise CheckpointError(f"sinusoidal positions need an even d_model, got {channels}")
    inc = math.log(max_timescale) / (channels // 2 - 1)
    t = np.arange(length, dtype=np.float64)[:, None] * np.exp(-inc * np.arange(channels // 2))[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)


# Self-attention Q/K/V fused into one [3d, d] matrix (K has no bias in Whisper: its slice of the fused
# bias is zero); the cross-attention K/V of all decoder layers fused into one [layers * 2d, d] matrix.
KEYS = KeyTable("Whisper", Layout("hf", "encoder.conv1.weight", strip=("model.",), keys={
    "{stack}.layers.{i}.self_attn.qkv.weight": Concat(*(f"{{stack}}.layers.{{i}}.self_attn.{p}_proj.weight"
                                                         for p in "qkv")),
    "{stack}.layers.{i}.self_attn.qkv.bias": Concat("{stack}.layers.{i}.self_attn.q_proj.bias", Zeros(),
                                                    "{stack}.layers.{i}.self_attn.v_proj.bias"),
    "decoder.cross_kv.weight": Concat("decoder.layers.{j}.encoder_attn.k_proj.weight",
                                      "decoder.layers.{j}.encoder_attn.v_proj.weight", each="j"),
    "decoder.cross_kv.bias": Concat(Zeros(), "decoder.layers.{j}.encoder_attn.v_proj.bias", each="j"),
    # a buffer some exporters drop: it is always the fixed sinusoid table
    "encoder.embed_positions.weight": OrMake("encoder.embed_positions.weight", lambda shape: sinusoids(*shape)),
    "{stack}.layers.{i}.{name}": "{stack}.layers.{i}.{name}",
    "{name}": "{name}",
}, tied={"proj_out.weight": "decoder.embed_tokens.weight"}))


def whisper_params(weights: WeightMap, cfg: WhisperConfig, dtype="float32", progress: bool = False) -> dict[str, np.ndarray]:
    """HF Whisper keys (with or without the `model.` prefix) -> graph parameters (see `KEYS`)."""
    spec = {**WhisperEncoder(cfg, dtype).params(), **WhisperDecoder(cfg, dtype).params()}
    layers = range(max(cfg.encoder_layers, cfg.decoder_layers))
    if progress:
        from tqdm import tqdm
        layers = tqdm(layers, desc="loading weights", unit="layer", leave=False)
    return KEYS.load(weights, spec, layers=layers)


def load_whisper(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
                 progress: bool = False) -> WhisperModel:
    """Load a HF Whisper checkpoint directory (or cached hub id) with its tokenizer and generation config.

    optimize=False compiles the graphs without the e-graph optimizer (for debugging); progress shows
    a bar while the weights are mapped.
    """
    from kiln.models.whisper_decoding import WhisperGenerationConfig

    d = resolve_model_path(path)
    raw = read_config(d)
    if raw.get("model_type", "whisper") != "whisper":
        raise CheckpointError(f"{raw.path}: model_type {raw.get('model_type')!r} is not 'whisper'")
    cfg = WhisperConfig.from_dict(raw)
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    tok = Tokenizer.from_dir(d) if (d / "tokenizer.json").exists() else None
    gen = WhisperGenerationConfig.from_dir(d, cfg, tok)
    return whisper_from_weights(cfg, weights, tokenizer=tok, generation_config=gen, device=device, dtype=dtype,
                                optimize=optimize, progress=progress)


def whisper_from_weights(cfg: "WhisperConfig", weights: WeightMap, *, tokenizer, generation_config,
                         device: str = "cpu", dtype: str = "float32", optimize: bool = True,
                         progress: bool = False) -> "WhisperModel":
    """A WhisperModel from a parsed config and checkpoint tensors in HF key layout (any weight source)."""
    from kiln.models.whisper_runtime import WhisperModel

    params = whisper_params(weights, cfg, dtype, progress=progress)
    return WhisperModel(cfg, params, generation_config, tokenizer, device, dtype, optimize)


def __getattr__(name: str):
    """The runtime classes (WhisperModel, DecoderState, EncoderOutput) live in whisper_runtime, which
    imports this module; they are reachable from here too."""
    if name in ("WhisperModel", "DecoderState", "EncoderOutput"):
        from kiln.models import whisper_runtime
        return getattr(whisper_runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
