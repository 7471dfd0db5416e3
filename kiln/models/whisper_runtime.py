"""A loaded Whisper model: compiled encoder/decoder graphs per static shape, the encoder's output
with the decoder's cross K/V, and a decoding session's bucketed self-attention cache.

The self-attention cache lives outside the graph as NumPy arrays [rows, heads, capacity,
head_dim]: a step feeds the cache and a bool mask of its filled slots, the graph attends over
concat(cache, new) and returns only the new K/V, which `DecoderState` writes into the cache.
Capacities grow in a few fixed buckets so a short transcript does not attend over 448 slots.

The graphs and the checkpoint mapping are in :mod:`kiln.models.whisper`; decoding (prompts, searches,
timestamps, long-form audio) in :mod:`kiln.models.whisper_decoding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.io.tokenizer import Tokenizer
from kiln.ir import as_dtype
from kiln.models.whisper import WhisperConfig, build_decoder_graph, build_encoder_graph
from kiln.runtime.compiler import compile as compile_graph

MIN_CACHE = 32  # smallest self-attention cache capacity; doubles up to max_target_positions


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
            cg = compile_graph(g, device=self.device, optimize=self.optimize)
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
