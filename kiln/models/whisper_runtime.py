"""A loaded Whisper model: compiled encoder/decoder graphs per static shape, the encoder's output
with the decoder's cross K/V, and a decoding session's self-attention cache.

The self-attention cache is state of the compiled decoder graphs ([rows, heads, capacity,
head_dim] per layer; on the GPU for device="cuda"): a step writes its tokens' K/V in place at
the next slots, and all decoder graphs of one (batch, group, capacity) share the buffers.
Capacities grow in a few fixed buckets, so a short transcript does not attend over 448 slots;
growing copies the filled slots into the next bucket's buffers, and beam search reorders rows
in place, both where the buffers live.

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
    """A decoding session: the cross K/V of `batch` utterances and the self-attention cache (graph
    state) for `group` hypotheses per utterance (rows are utterance-major). One session per
    (batch, group) runs at a time: sessions share the model's cache buffers."""

    def __init__(self, model: WhisperModel, encoder_output: EncoderOutput, group: int = 1):
        self.model, self.enc, self.group = model, encoder_output, group
        self.rows = encoder_output.batch * group
        self.length = 0
        self.capacity = 0

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
        self._reserve(start + seq)
        run = self.model._decoder(self.enc.batch, self.group, seq, self.capacity)
        out = run(input_ids=ids.astype(np.int64, copy=False), positions=np.arange(start, start + seq, dtype=np.int64),
                  cache_position=np.array([start], np.int64), **self.enc.cross_kv)
        self.length = start + seq
        return out["logits"]

    def reorder(self, rows) -> None:
        """Keep cache rows `rows` (beam search: row r continues hypothesis rows[r] of the same utterance)."""
        idx = np.asarray(rows, dtype=np.int64)
        if idx.shape != (self.rows,):
            raise ValueError(f"reorder needs {self.rows} row indices, got shape {idx.shape}")
        if np.any(idx // self.group != np.arange(self.rows) // self.group):
            raise ValueError("reorder may only move hypotheses within their own utterance")
        holder = self.model._decoder(self.enc.batch, self.group, 1, self.capacity)
        for name in holder.state_types:
            holder.reorder_state(name, idx)

    def _reserve(self, needed: int) -> None:
        """Move to a bucket capacity >= needed, copying the filled slots into its buffers."""
        if needed <= self.capacity:
            return
        cap = MIN_CACHE
        while cap < needed:
            cap *= 2
        cap = max(needed, min(cap, self.model.config.max_target_positions))
        if self.length:
            old = self.model._decoder(self.enc.batch, self.group, 1, self.capacity)
            new = self.model._decoder(self.enc.batch, self.group, 1, cap)
            for name in old.state_types:
                new.state_buffer(name)[:, :, :self.length] = old.state_buffer(name)[:, :, :self.length]
        self.capacity = cap


class WhisperModel:
    """A loaded Whisper checkpoint: `model(input_features=..., decoder_input_ids=...)` like HF,
    `model.generate(input_features, ...)` and `model.transcribe(audio)`."""

    def __init__(self, cfg: WhisperConfig, params: dict, generation_config, tokenizer: Tokenizer | None,
                 device: str = "cpu", dtype: str = "float32", optimize: bool = True):
        self.config, self.params, self.generation_config = cfg, params, generation_config
        self.tokenizer, self.device, self.dtype, self.optimize = tokenizer, device, dtype, optimize
        self.np_dtype = as_dtype(dtype).np_dtype
        self._compiled: dict[tuple, object] = {}
        self._cache_buffers: dict[tuple, dict] = {}   # (batch, group, capacity) -> state name -> buffer

    # -- compiled graphs, one per static shape
    def _get(self, key: tuple, build, shares: tuple | None = None):
        if key not in self._compiled:
            g = build()
            cg = compile_graph(g, device=self.device, optimize=self.optimize)
            cg.load_params({k: self.params[k] for k in g.parameters})
            if shares is not None:
                cg.share_states(self._cache_buffers.setdefault(shares, {}))
            self._compiled[key] = cg
        return self._compiled[key]

    def _encoder(self, batch: int):
        return self._get(("encoder", batch), lambda: build_encoder_graph(self.config, batch, self.dtype))

    def _decoder(self, batch: int, group: int, seq: int, cache: int):
        return self._get(("decoder", batch, group, seq, cache),
                         lambda: build_decoder_graph(self.config, batch, group, seq, cache, self.dtype),
                         shares=(batch, group, cache))

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
