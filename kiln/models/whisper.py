"""Whisper speech recognition (HF `WhisperForConditionalGeneration` checkpoints).

Two kinds of static graphs, compiled per shape and cached:

* the **encoder** for a batch size: two conv1d + GELU over the log-mel frames,
  the checkpoint's position table (sinusoidal in every released model, stored as
  a weight), pre-LN blocks with fused Q/K/V, a final LayerNorm; it also projects
  the encoder output once into every decoder layer's cross-attention K/V (one
  fused matmul for all layers), so decoding never recomputes them;
* the **decoder** for (utterances, rows per utterance, new tokens, cache size):
  token + learned position embeddings, pre-LN blocks of causal self-attention
  over a static KV cache, cross-attention over the precomputed K/V and a GELU
  MLP, then the output projection tied to the token embedding.

The self-attention cache lives outside the graph as NumPy arrays
``[rows, heads, capacity, head_dim]``: a step feeds the cache and a bool mask of
its filled slots, the graph attends over ``concat(cache, new)`` and returns only
the new K/V, which :class:`DecoderState` writes into the cache. Capacities grow
in a few fixed buckets so a short transcript does not attend over 448 slots.
Beam hypotheses of one utterance share its cross K/V: the decoder folds the
beams into the query axis of cross-attention instead of copying K/V per beam.

Decoding (forced prompt, language detection, greedy / beam search, timestamps,
long-form audio) is in :mod:`kiln.models.whisper_decoding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import kiln
from kiln.io.config import read_config
from kiln.io.errors import CheckpointError
from kiln.io.hub import resolve_model_path
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, as_dtype

ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_python": "none"}
LAYER_NORM_EPS = 1e-5  # HF Whisper uses nn.LayerNorm's default
CONV_STRIDE = 2  # conv1 stride 1 x conv2 stride 2: mel frames per encoder position
MIN_CACHE = 32  # smallest self-attention cache capacity; doubles up to max_target_positions


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
        if act not in ACTIVATIONS:
            raise CheckpointError(f"{where}: Whisper activation_function {act!r} is not supported; "
                                  f"expected one of {sorted(ACTIVATIONS)}")
        try:
            c = cls(cfg["vocab_size"], cfg.get("num_mel_bins", 80), cfg["d_model"],
                    cfg["encoder_layers"], cfg["encoder_attention_heads"], cfg["encoder_ffn_dim"],
                    cfg["decoder_layers"], cfg["decoder_attention_heads"], cfg["decoder_ffn_dim"],
                    cfg.get("max_source_positions", 1500), cfg.get("max_target_positions", 448), act,
                    cfg.get("tie_word_embeddings", True), cfg.get("decoder_start_token_id"),
                    cfg.get("eos_token_id"), cfg.get("pad_token_id"))
        except KeyError as e:
            raise CheckpointError(f"{where}: Whisper config lacks {e.args[0]!r}") from None
        for heads, what in ((c.encoder_attention_heads, "encoder"), (c.decoder_attention_heads, "decoder")):
            if c.d_model % heads:
                raise CheckpointError(f"{where}: d_model {c.d_model} is not divisible by "
                                      f"{what}_attention_heads {heads}")
        return c

    @property
    def num_frames(self) -> int:
        """Mel frames of one 30 s window: what the encoder takes (3000 for every released size)."""
        return self.max_source_positions * CONV_STRIDE


# ---- graphs -------------------------------------------------------------------

def _heads(g: Graph, t, rows: int, seq: int, nh: int, hd: int):
    """[rows, seq, nh*hd] -> [rows, nh, seq, hd]."""
    return g.transpose(g.reshape(t, shape=[rows, seq, nh, hd]), perm=[0, 2, 1, 3])


def _merge_heads(g: Graph, t, rows: int, seq: int, d: int):
    """[rows, nh, seq, hd] -> [rows, seq, nh*hd]."""
    return g.reshape(g.transpose(t, perm=[0, 2, 1, 3]), shape=[rows, seq, d])


def _mlp(g: Graph, x, p, pre: str, d: int, ffn: int, approx: str):
    h = g.layer_norm(x, p(pre + "final_layer_norm.weight", (d,)), p(pre + "final_layer_norm.bias", (d,)),
                     eps=LAYER_NORM_EPS)
    h = g.gelu(g.linear(h, p(pre + "fc1.weight", (ffn, d)), p(pre + "fc1.bias", (ffn,))), approximate=approx)
    return x + g.linear(h, p(pre + "fc2.weight", (d, ffn)), p(pre + "fc2.bias", (d,)))


def build_encoder_graph(cfg: WhisperConfig, batch: int, dtype="float32") -> Graph:
    """input_features [B, n_mels, 3000] -> last_hidden_state [B, 1500, d] and every decoder
    layer's cross-attention K/V (``cross_k.{i}``, ``cross_v.{i}``: [B, heads, 1500, head_dim])."""
    dt = as_dtype(dtype)
    d, nh, n_pos = cfg.d_model, cfg.encoder_attention_heads, cfg.max_source_positions
    hd = d // nh
    approx = ACTIVATIONS[cfg.activation_function]
    g = Graph(f"whisper_encoder_b{batch}")

    def p(name, shape):
        return g.parameter(name, shape, dt)

    feats = g.input("input_features", (batch, cfg.num_mel_bins, cfg.num_frames), dt)
    x = g.conv1d(feats, p("encoder.conv1.weight", (d, cfg.num_mel_bins, 3)), p("encoder.conv1.bias", (d,)),
                 padding=1)
    x = g.gelu(x, approximate=approx)
    x = g.conv1d(x, p("encoder.conv2.weight", (d, d, 3)), p("encoder.conv2.bias", (d,)), stride=2, padding=1)
    x = g.gelu(x, approximate=approx)
    x = g.transpose(x, perm=[0, 2, 1])  # [B, positions, d]
    x = x + g.reshape(p("encoder.embed_positions.weight", (n_pos, d)), shape=[1, n_pos, d])
    for i in range(cfg.encoder_layers):
        pre = f"encoder.layers.{i}."
        h = g.layer_norm(x, p(pre + "self_attn_layer_norm.weight", (d,)), p(pre + "self_attn_layer_norm.bias", (d,)),
                         eps=LAYER_NORM_EPS)
        qkv = g.linear(h, p(pre + "self_attn.qkv.weight", (3 * d, d)), p(pre + "self_attn.qkv.bias", (3 * d,)))
        q, k, v = (_heads(g, t, batch, n_pos, nh, hd) for t in g.split(qkv, sizes=[d, d, d], axis=-1))
        a = _merge_heads(g, g.attention(q, k, v, scale=hd ** -0.5), batch, n_pos, d)
        x = x + g.linear(a, p(pre + "self_attn.out_proj.weight", (d, d)), p(pre + "self_attn.out_proj.bias", (d,)))
        x = _mlp(g, x, p, pre, d, cfg.encoder_ffn_dim, approx)
    x = g.layer_norm(x, p("encoder.layer_norm.weight", (d,)), p("encoder.layer_norm.bias", (d,)), eps=LAYER_NORM_EPS)
    g.output("last_hidden_state", x)

    # Cross-attention K/V of every decoder layer in one matmul: [B, positions, layers * 2 * d].
    nl, dnh = cfg.decoder_layers, cfg.decoder_attention_heads
    kv = g.linear(x, p("decoder.cross_kv.weight", (nl * 2 * d, d)), p("decoder.cross_kv.bias", (nl * 2 * d,)))
    parts = g.split(kv, sizes=[d] * (2 * nl), axis=-1)
    for i in range(nl):
        g.output(f"cross_k.{i}", _heads(g, parts[2 * i], batch, n_pos, dnh, d // dnh))
        g.output(f"cross_v.{i}", _heads(g, parts[2 * i + 1], batch, n_pos, dnh, d // dnh))
    return g


def build_decoder_graph(cfg: WhisperConfig, batch: int, group: int, seq: int, cache: int, dtype="float32") -> Graph:
    """One decoder pass over `seq` new tokens for `batch` utterances x `group` hypotheses each.

    Inputs: ``input_ids`` [rows, seq] (rows = batch * group, utterance-major), ``positions`` [seq],
    per layer ``cross_k.{i}`` / ``cross_v.{i}`` [batch, heads, 1500, head_dim] and, when
    ``cache > 0``, ``self_k.{i}`` / ``self_v.{i}`` [rows, heads, cache, head_dim] with ``cache_mask``
    [1, 1, seq, cache + seq] (True where a query may attend). Outputs: ``logits`` [rows, seq, vocab]
    and the new self-attention K/V ``new_k.{i}`` / ``new_v.{i}`` [rows, heads, seq, head_dim].
    """
    dt = as_dtype(dtype)
    d, nh, rows = cfg.d_model, cfg.decoder_attention_heads, batch * group
    hd = d // nh
    n_src = cfg.max_source_positions
    approx = ACTIVATIONS[cfg.activation_function]
    g = Graph(f"whisper_decoder_b{batch}_g{group}_s{seq}_c{cache}")

    def p(name, shape):
        return g.parameter(name, shape, dt)

    ids = g.input("input_ids", (rows, seq), "int64")
    positions = g.input("positions", (seq,), "int64")
    mask = g.input("cache_mask", (1, 1, seq, cache + seq), "bool") if cache else None
    embed = p("decoder.embed_tokens.weight", (cfg.vocab_size, d))
    x = g.embedding(ids, embed) + g.embedding(positions, p("decoder.embed_positions.weight",
                                                           (cfg.max_target_positions, d)))
    for i in range(cfg.decoder_layers):
        pre = f"decoder.layers.{i}."
        # causal self-attention over cache + new tokens
        h = g.layer_norm(x, p(pre + "self_attn_layer_norm.weight", (d,)), p(pre + "self_attn_layer_norm.bias", (d,)),
                         eps=LAYER_NORM_EPS)
        qkv = g.linear(h, p(pre + "self_attn.qkv.weight", (3 * d, d)), p(pre + "self_attn.qkv.bias", (3 * d,)))
        q, k, v = (_heads(g, t, rows, seq, nh, hd) for t in g.split(qkv, sizes=[d, d, d], axis=-1))
        g.output(f"new_k.{i}", k)
        g.output(f"new_v.{i}", v)
        if cache:
            k = g.concat([g.input(f"self_k.{i}", (rows, nh, cache, hd), dt), k], axis=2)
            v = g.concat([g.input(f"self_v.{i}", (rows, nh, cache, hd), dt), v], axis=2)
            a = g.attention(q, k, v, mask, scale=hd ** -0.5)
        else:
            a = g.attention(q, k, v, causal=True, scale=hd ** -0.5)
        a = _merge_heads(g, a, rows, seq, d)
        x = x + g.linear(a, p(pre + "self_attn.out_proj.weight", (d, d)), p(pre + "self_attn.out_proj.bias", (d,)))
        # cross-attention over the encoder output's precomputed K/V
        h = g.layer_norm(x, p(pre + "encoder_attn_layer_norm.weight", (d,)),
                         p(pre + "encoder_attn_layer_norm.bias", (d,)), eps=LAYER_NORM_EPS)
        q = g.linear(h, p(pre + "encoder_attn.q_proj.weight", (d, d)), p(pre + "encoder_attn.q_proj.bias", (d,)))
        ck = g.input(f"cross_k.{i}", (batch, nh, n_src, hd), dt)
        cv = g.input(f"cross_v.{i}", (batch, nh, n_src, hd), dt)
        if group == 1:
            a = _merge_heads(g, g.attention(_heads(g, q, rows, seq, nh, hd), ck, cv, scale=hd ** -0.5), rows, seq, d)
        else:  # the group's hypotheses become extra query rows of their utterance: K/V are not copied
            qg = g.reshape(g.transpose(g.reshape(q, shape=[batch, group, seq, nh, hd]), perm=[0, 3, 1, 2, 4]),
                           shape=[batch, nh, group * seq, hd])
            a = g.attention(qg, ck, cv, scale=hd ** -0.5)  # [batch, nh, group * seq, hd]
            a = g.transpose(g.reshape(a, shape=[batch, nh, group, seq, hd]), perm=[0, 2, 3, 1, 4])
            a = g.reshape(a, shape=[rows, seq, d])
        x = x + g.linear(a, p(pre + "encoder_attn.out_proj.weight", (d, d)),
                         p(pre + "encoder_attn.out_proj.bias", (d,)))
        x = _mlp(g, x, p, pre, d, cfg.decoder_ffn_dim, approx)
    x = g.layer_norm(x, p("decoder.layer_norm.weight", (d,)), p("decoder.layer_norm.bias", (d,)), eps=LAYER_NORM_EPS)
    out_w = embed if cfg.tie_word_embeddings else p("proj_out.weight", (cfg.vocab_size, d))
    g.output("logits", g.linear(x, out_w))
    return g


# ---- weights ------------------------------------------------------------------

def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The encoder's sinusoidal position table (what released checkpoints store as a weight)."""
    if channels % 2:
        raise CheckpointError(f"sinusoidal positions need an even d_model, got {channels}")
    inc = math.log(max_timescale) / (channels // 2 - 1)
    t = np.arange(length, dtype=np.float64)[:, None] * np.exp(-inc * np.arange(channels // 2))[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)


def whisper_params(weights: WeightMap, cfg: WhisperConfig, dtype="float32", progress: bool = False) -> dict[str, np.ndarray]:
    """HF Whisper keys (with or without the `model.` prefix) -> graph parameters.

    Q/K/V of self-attention are fused into one [3d, d] matrix (K has no bias in Whisper, so
    its slice of the fused bias is zero); the cross-attention K/V of all decoder layers are
    fused into one [layers * 2d, d] matrix applied once to the encoder output.
    """
    w = weights
    if not w.has("encoder.conv1.weight") and w.has_prefix("model."):
        w = w.strip_prefix("model.")  # WhisperForConditionalGeneration -> WhisperModel layout
    dt = as_dtype(dtype).np_dtype
    d = cfg.d_model
    out: dict[str, np.ndarray] = {}
    zeros = np.zeros((d,), dt)

    def put(name, shape):
        out[name] = w.take(name, shape=shape, dtype=dt)

    def attn_qkv(pre):
        out[pre + "qkv.weight"] = w.take_concat([pre + f"{n}_proj.weight" for n in "qkv"], axis=0,
                                                shape=(3 * d, d), dtype=dt)
        out[pre + "qkv.bias"] = np.concatenate([w.take(pre + "q_proj.bias", shape=(d,), dtype=dt), zeros,
                                                w.take(pre + "v_proj.bias", shape=(d,), dtype=dt)])
        put(pre + "out_proj.weight", (d, d))
        put(pre + "out_proj.bias", (d,))

    def block_common(pre, ffn):
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            put(pre + ln + ".weight", (d,))
            put(pre + ln + ".bias", (d,))
        put(pre + "fc1.weight", (ffn, d))
        put(pre + "fc1.bias", (ffn,))
        put(pre + "fc2.weight", (d, ffn))
        put(pre + "fc2.bias", (d,))

    put("encoder.conv1.weight", (d, cfg.num_mel_bins, 3))
    put("encoder.conv1.bias", (d,))
    put("encoder.conv2.weight", (d, d, 3))
    put("encoder.conv2.bias", (d,))
    if w.has("encoder.embed_positions.weight"):
        put("encoder.embed_positions.weight", (cfg.max_source_positions, d))
    else:  # a buffer some exporters drop: it is always the fixed sinusoid table
        out["encoder.embed_positions.weight"] = sinusoids(cfg.max_source_positions, d).astype(dt)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.encoder_layers + cfg.decoder_layers, desc="loading weights", unit="layer", leave=False)
    for i in range(cfg.encoder_layers):
        pre = f"encoder.layers.{i}."
        if bar is not None:
            bar.update()
        attn_qkv(pre + "self_attn.")
        block_common(pre, cfg.encoder_ffn_dim)
    put("encoder.layer_norm.weight", (d,))
    put("encoder.layer_norm.bias", (d,))

    put("decoder.embed_tokens.weight", (cfg.vocab_size, d))
    put("decoder.embed_positions.weight", (cfg.max_target_positions, d))
    cross_w, cross_b = [], []
    for i in range(cfg.decoder_layers):
        pre = f"decoder.layers.{i}."
        if bar is not None:
            bar.update()
        attn_qkv(pre + "self_attn.")
        block_common(pre, cfg.decoder_ffn_dim)
        ea = pre + "encoder_attn."
        put(ea + "q_proj.weight", (d, d))
        put(ea + "q_proj.bias", (d,))
        put(ea + "out_proj.weight", (d, d))
        put(ea + "out_proj.bias", (d,))
        put(pre + "encoder_attn_layer_norm.weight", (d,))
        put(pre + "encoder_attn_layer_norm.bias", (d,))
        cross_w.append(w.take_concat([ea + "k_proj.weight", ea + "v_proj.weight"], axis=0, shape=(2 * d, d), dtype=dt))
        cross_b += [zeros, w.take(ea + "v_proj.bias", shape=(d,), dtype=dt)]
    out["decoder.cross_kv.weight"] = np.concatenate(cross_w, axis=0)
    out["decoder.cross_kv.bias"] = np.concatenate(cross_b)
    put("decoder.layer_norm.weight", (d,))
    put("decoder.layer_norm.bias", (d,))
    if bar is not None:
        bar.close()

    if not cfg.tie_word_embeddings:
        put("proj_out.weight", (cfg.vocab_size, d))
    elif w.has("proj_out.weight"):  # a stored copy of the tied matrix must be that matrix
        proj = w.take("proj_out.weight", shape=(cfg.vocab_size, d), dtype=dt)
        if not np.array_equal(proj, out["decoder.embed_tokens.weight"]):
            raise CheckpointError(f"{weights.source}: tie_word_embeddings is true but 'proj_out.weight' differs "
                                  f"from the token embedding 'decoder.embed_tokens.weight'")
    weights.warn_unused()
    return out


# ---- running ------------------------------------------------------------------

@dataclass
class EncoderOutput:
    """The encoder's result for a batch of 30 s windows, with the decoder's cross K/V."""

    last_hidden_state: np.ndarray  # [B, 1500, d]
    cross_kv: dict[str, np.ndarray]  # cross_k.{i} / cross_v.{i}: [B, heads, 1500, head_dim]

    @property
    def batch(self) -> int:
        return self.last_hidden_state.shape[0]

    def select(self, utterances) -> EncoderOutput:
        idx = np.asarray(utterances, dtype=np.int64)
        return EncoderOutput(self.last_hidden_state[idx], {k: v[idx] for k, v in self.cross_kv.items()})


class DecoderState:
    """A decoding session: the cross K/V of `batch` utterances and a static self-attention
    KV cache for `group` hypotheses per utterance (rows are utterance-major)."""

    def __init__(self, model: WhisperModel, encoder_output: EncoderOutput, group: int = 1):
        cfg = model.config
        self.model, self.enc, self.group = model, encoder_output, group
        self.rows = encoder_output.batch * group
        self.length = 0
        self.capacity = 0
        nh = cfg.decoder_attention_heads
        self._shape = (self.rows, nh, 0, cfg.d_model // nh)
        self.k = [np.zeros(self._shape, model.np_dtype) for _ in range(cfg.decoder_layers)]
        self.v = [np.zeros(self._shape, model.np_dtype) for _ in range(cfg.decoder_layers)]

    def step(self, input_ids) -> np.ndarray:
        """Feed tokens [rows, seq] at the next positions; returns logits [rows, seq, vocab]."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[0] != self.rows or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decoder input_ids must be an integer array [{self.rows}, seq], "
                             f"got {ids.dtype} {ids.shape}")
        cfg = self.model.config
        seq, start = ids.shape[1], self.length
        if start + seq > cfg.max_target_positions:
            raise ValueError(f"decoder sequence of {start + seq} tokens exceeds max_target_positions "
                             f"{cfg.max_target_positions}")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise ValueError(f"decoder input_ids must be in [0, {cfg.vocab_size}), got [{ids.min()}, {ids.max()}]")
        cache = self._reserve(start + seq) if start else 0  # the prefill attends over its own tokens only
        run = self.model._decoder(self.enc.batch, self.group, seq, cache)
        inputs = {"input_ids": ids.astype(np.int64, copy=False),
                  "positions": np.arange(start, start + seq, dtype=np.int64), **self.enc.cross_kv}
        if cache:
            allowed = np.zeros((1, 1, seq, cache + seq), bool)
            allowed[..., :start] = True
            allowed[0, 0, :, cache:] = np.tril(np.ones((seq, seq), bool))
            inputs["cache_mask"] = allowed
            for i in range(cfg.decoder_layers):
                inputs[f"self_k.{i}"], inputs[f"self_v.{i}"] = self.k[i], self.v[i]
        out = run(**inputs)
        if not start:
            self._reserve(seq)
        for i in range(cfg.decoder_layers):
            self.k[i][:, :, start:start + seq] = out[f"new_k.{i}"]
            self.v[i][:, :, start:start + seq] = out[f"new_v.{i}"]
        self.length = start + seq
        return out["logits"]

    def reorder(self, rows) -> None:
        """Keep cache rows `rows` (beam search: row r continues hypothesis rows[r] of the same utterance)."""
        idx = np.asarray(rows, dtype=np.int64)
        if idx.shape != (self.rows,):
            raise ValueError(f"reorder needs {self.rows} row indices, got shape {idx.shape}")
        if np.any(idx // self.group != np.arange(self.rows) // self.group):
            raise ValueError("reorder may only move hypotheses within their own utterance")
        self.k = [k[idx] for k in self.k]
        self.v = [v[idx] for v in self.v]

    def _reserve(self, needed: int) -> int:
        """Grow the cache to a bucket capacity >= needed (copying what it holds); returns the capacity."""
        if needed > self.capacity:
            cap = MIN_CACHE
            while cap < needed:
                cap *= 2
            cap = max(needed, min(cap, self.model.config.max_target_positions))
            rows, nh, _, hd = self._shape
            grow = [np.zeros((rows, nh, cap, hd), self.model.np_dtype) for _ in range(2 * len(self.k))]
            for i in range(len(self.k)):
                grow[2 * i][:, :, :self.length] = self.k[i][:, :, :self.length]
                grow[2 * i + 1][:, :, :self.length] = self.v[i][:, :, :self.length]
            self.k, self.v = grow[0::2], grow[1::2]
            self.capacity = cap
        return self.capacity


class WhisperModel:
    """A loaded Whisper checkpoint: `model(input_features=..., decoder_input_ids=...)` like HF,
    `model.generate(input_features, ...)` and `model.transcribe(audio)`."""

    def __init__(self, cfg: WhisperConfig, params: dict, generation_config, tokenizer: Tokenizer | None,
                 device: str = "cpu", dtype: str = "float32", optimize: bool = True):
        self.config, self.params, self.generation_config = cfg, params, generation_config
        self.tokenizer, self.device, self.dtype, self.optimize = tokenizer, device, dtype, optimize
        self.np_dtype = as_dtype(dtype).np_dtype
        self._compiled: dict[tuple, object] = {}

    # -- compiled graphs, one per static shape
    def _get(self, key: tuple, build):
        if key not in self._compiled:
            g = build()
            cg = kiln.compile(g, device=self.device, optimize=self.optimize)
            cg.load_params({k: self.params[k] for k in g.parameters})
            self._compiled[key] = cg
        return self._compiled[key]

    def _encoder(self, batch: int):
        return self._get(("encoder", batch), lambda: build_encoder_graph(self.config, batch, self.dtype))

    def _decoder(self, batch: int, group: int, seq: int, cache: int):
        return self._get(("decoder", batch, group, seq, cache),
                         lambda: build_decoder_graph(self.config, batch, group, seq, cache, self.dtype))

    # -- model API
    def encode(self, input_features) -> EncoderOutput:
        """Run the encoder on log-mel features [B, n_mels, 3000] (float32; cast to the model dtype)."""
        feats = np.asarray(input_features)
        cfg = self.config
        expected = (cfg.num_mel_bins, cfg.num_frames)
        if feats.ndim != 3 or feats.shape[1:] != expected or feats.shape[0] < 1:
            raise ValueError(f"input_features must be [batch, {expected[0]}, {expected[1]}] log-mel frames (one "
                             f"30 s window; use model.generate or transcribe for longer audio), got shape {feats.shape}")
        if not np.issubdtype(feats.dtype, np.floating):
            raise TypeError(f"input_features must be a float array, got dtype {feats.dtype}")
        if not np.all(np.isfinite(feats)):
            raise ValueError("input_features contain NaN or Inf values")
        out = self._encoder(feats.shape[0]).run(input_features=feats.astype(self.np_dtype, copy=False))
        hidden = out.pop("last_hidden_state")
        return EncoderOutput(hidden, out)

    def start_decoding(self, encoder_output: EncoderOutput, group: int = 1) -> DecoderState:
        return DecoderState(self, encoder_output, group)

    def __call__(self, input_features=None, decoder_input_ids=None, encoder_outputs: EncoderOutput | None = None):
        """HF's forward: logits [B, seq, vocab] for `decoder_input_ids` given the audio features."""
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required (start with the decoder_start_token_id)")
        if (input_features is None) == (encoder_outputs is None):
            raise ValueError("give exactly one of input_features and encoder_outputs")
        enc = self.encode(input_features) if encoder_outputs is None else encoder_outputs
        ids = np.asarray(decoder_input_ids)
        if ids.ndim != 2 or ids.shape[0] != enc.batch:
            raise ValueError(f"decoder_input_ids must be [{enc.batch}, seq], got shape {ids.shape}")
        logits = self.start_decoding(enc).step(ids)
        return {"logits": logits, "encoder_last_hidden_state": enc.last_hidden_state}

    def generate(self, input_features, **kwargs):
        """Token ids like HF `WhisperForConditionalGeneration.generate`; see `whisper_decoding.generate`."""
        from kiln.models.whisper_decoding import generate
        return generate(self, input_features, **kwargs)

    def detect_language(self, input_features) -> list[str]:
        """The most likely language token (e.g. "<|en|>") of each window's first 30 s."""
        from kiln.models.whisper_decoding import detect_language
        return detect_language(self, input_features)

    def transcribe(self, path_or_array, language: str | None = None, task: str = "transcribe",
                   return_segments: bool = False, sampling_rate: int | None = None, num_beams: int | None = None):
        """Text of an audio file or array (any rate and channel count); see `whisper_decoding.transcribe`."""
        from kiln.models.whisper_decoding import transcribe
        return transcribe(self, path_or_array, language=language, task=task, return_segments=return_segments,
                          sampling_rate=sampling_rate, num_beams=num_beams)


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
    params = whisper_params(weights, cfg, dtype, progress=progress)
    return WhisperModel(cfg, params, generation_config, tokenizer, device, dtype, optimize)
