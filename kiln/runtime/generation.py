"""Autoregressive generation with HF transformers' `generate` semantics (greedy and sampling).

What "HF semantics" means here, step by step, as `GenerationMixin._sample` does it:
position ids are `cumsum(attention_mask) - 1` (so left padding does not shift
positions), the next-token logits are taken in float32, the logits processors run
in HF's order, then argmax (greedy) or a draw from softmax(scores) (sampling);
finished rows receive `pad_token_id` (EOS when no pad is set), and the loop stops
when every row has produced an EOS or the length limit is reached. Settings come
from, in increasing priority: HF's defaults, the checkpoint's generation_config.json
(or config.json's special token ids), and the caller's arguments.

The model is anything with `new_cache(batch, max_length)`, `prefill(ids, mask,
positions, cache) -> [B, V]` and `decode(tokens, positions, cache) -> [B, V]`; a model
with `device_greedy` also takes `prefill(..., greedy=True)` (argmax ids [B]) and offers
`greedy_steps(cache, tokens, positions, unfinished, eos, pad, count)`, an iterator of each decode
step's ids, for plain greedy decoding: logits never leave the device and steps overlap the
host's work.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ConfigError, InputError
from kiln.files import read_json_if_present

from .logits_processors import apply_processors, build_processors, softmax

# HF's `GenerationConfig._get_default_generation_params` for the settings kiln implements.
HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
               "repetition_penalty": 1.0}
DEFAULT_NEW_TOKENS = 20  # HF 5: with no max_length/max_new_tokens set anywhere, generate 20 new tokens

# generation_config.json fields that kiln does not implement, with the value at which they are inactive.
_INACTIVE = {"num_beams": 1, "num_return_sequences": 1, "no_repeat_ngram_size": 0, "bad_words_ids": None,
             "min_length": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None,
             "penalty_alpha": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
             "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
             "guidance_scale": None, "stop_strings": None, "exponential_decay_length_penalty": None,
             "renormalize_logits": False, "num_beam_groups": 1, "diversity_penalty": 0.0,
             "encoder_repetition_penalty": 1.0, "top_h": None}


@dataclass
class GenerationConfig:
    """The generation settings kiln supports, named as in HF's GenerationConfig. None means unset."""

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    source: str = field(default="<defaults>", compare=False)

    @classmethod
    def from_dir(cls, directory, model_config: dict | None = None) -> "GenerationConfig":
        """generation_config.json of a checkpoint, else the special token ids of config.json (as HF)."""
        path = Path(directory) / "generation_config.json"
        raw = read_json_if_present(path, "generation config", ConfigError)   # only a regular JSON object file
        if raw is not None:
            active = {k: v for k, v in raw.items() if k in _INACTIVE and v != _INACTIVE[k]}
            if active:
                warnings.warn(f"{path}: generation settings {active} are not supported by kiln and are ignored")
            names = {f.name for f in dataclasses.fields(cls)} - {"source"}
            return cls(**{k: v for k, v in raw.items() if k in names}, source=str(path))
        cfg = model_config or {}
        return cls(eos_token_id=cfg.get("eos_token_id"), pad_token_id=cfg.get("pad_token_id"),
                   bos_token_id=cfg.get("bos_token_id"), source=str(Path(directory) / "config.json"))

    def merged(self, **overrides: Any) -> "GenerationConfig":
        """A copy with the non-None `overrides` applied; unknown names raise TypeError."""
        names = {f.name for f in dataclasses.fields(self)} - {"source"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown generation setting(s) {unknown}; supported: {sorted(names)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def resolved(self, name: str):
        value = getattr(self, name)
        return HF_DEFAULTS.get(name) if value is None else value

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [int(e)] if isinstance(e, (int, np.integer)) else [int(x) for x in e]


@dataclass
class GenerateOutput:
    """Like HF's GenerateDecoderOnlyOutput: sequences plus per-step processed scores and raw logits."""

    sequences: np.ndarray
    scores: tuple[np.ndarray, ...] | None = None
    logits: tuple[np.ndarray, ...] | None = None


class TextStreamer:
    """Streams generated text as it becomes final (HF's streamer protocol: `put(ids)`, then `end()`).

    `on_text(piece)` receives each piece (default: print without a newline). As HF's
    TextStreamer, the first `put` is the prompt, which `skip_prompt` drops. Batch size 1.
    """

    def __init__(self, tokenizer, skip_prompt: bool = True, skip_special_tokens: bool = True, on_text=None):
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=skip_special_tokens)
        self.skip_prompt = skip_prompt
        self.on_text = on_text or (lambda s: print(s, end="", flush=True))
        self._first = True
        self.text = ""

    def put(self, value) -> None:
        ids = np.asarray(value)
        if ids.ndim > 1:
            if ids.shape[0] != 1:
                raise ValueError(f"TextStreamer supports batch size 1, got ids of shape {ids.shape}")
            ids = ids[0]
        if self._first:
            self._first = False
            if self.skip_prompt:
                return
        self._emit(self.decoder.extend(int(i) for i in ids.reshape(-1)))

    def end(self) -> None:
        self._emit(self.decoder.flush())

    def _emit(self, piece: str) -> None:
        if piece:
            self.text += piece
            self.on_text(piece)


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """HF's generation position ids: cumsum(mask) - 1, with padding slots set to 0."""
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 0, pos).astype(np.int64)


def _as_ids(name: str, a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be an integer array [batch, seq], got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from categorical `probs` (rows sum to 1); never picks a zero-probability token."""
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    out = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cdf, u)], dtype=np.int64)
    last_positive = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(out, last_positive)


def generate(model, input_ids, attention_mask=None, *, config: GenerationConfig, streamer=None,
             seed: int | np.random.Generator | None = None, output_scores: bool = False,
             output_logits: bool = False, return_dict_in_generate: bool = False, features=None):
    """Token ids [batch, prompt + new] (or a GenerateOutput); see the module docstring for the semantics.

    `features` (an encoder's rows at placeholder tokens) go to the model's prefill only."""
    ids = _as_ids("input_ids", input_ids)
    batch, prompt_len = ids.shape
    if prompt_len == 0:
        raise InputError("input_ids is empty: generation needs at least one prompt token")
    eos = config.eos_token_ids
    if attention_mask is not None:
        mask = _as_ids("attention_mask", attention_mask)
    elif config.pad_token_id is not None and config.pad_token_id not in eos and (ids == config.pad_token_id).any():
        mask = (ids != config.pad_token_id).astype(np.int64)  # as HF: infer the mask from padding
    else:
        mask = np.ones_like(ids)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, expected input_ids' shape {ids.shape}")
    if batch > 1 and np.any(mask[:, -1] == 0):
        warnings.warn("a decoder-only model is generating from right-padded input; "
                      "use left padding (padding_side='left') for correct results, as with HF")

    if config.max_new_tokens is not None:
        max_length = prompt_len + int(config.max_new_tokens)
    elif config.max_length is not None:
        max_length = int(config.max_length)
    else:  # as HF: with no length set anywhere, 20 new tokens (within the model's position range)
        max_length = prompt_len + DEFAULT_NEW_TOKENS
        limit = getattr(model, "max_position_embeddings", None)
        if limit is not None:
            max_length = min(max_length, limit)
    if max_length <= prompt_len:
        raise ValueError(f"nothing to generate: the prompt has {prompt_len} tokens and max_length is {max_length}; "
                         f"set max_new_tokens")
    limit = getattr(model, "max_position_embeddings", None)
    if limit is not None and max_length > limit:   # as HF: a warning, the positions are computed anyway
        warnings.warn(f"generating up to {max_length} tokens, past the model's max_position_embeddings ({limit}); "
                      f"positions beyond it were not trained")
    pad = config.pad_token_id
    if pad is None and eos:
        pad = eos[0]
    do_sample = bool(config.resolved("do_sample"))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    padding_lengths = np.argmax(mask != 0, axis=1)
    processors = build_processors(
        do_sample=do_sample, temperature=config.resolved("temperature"), top_k=config.resolved("top_k"),
        top_p=config.resolved("top_p"), repetition_penalty=config.resolved("repetition_penalty"),
        min_new_tokens=config.min_new_tokens, eos_token_ids=eos, prompt_length=prompt_len,
        padding_lengths=padding_lengths)

    positions = position_ids_from_mask(mask)
    cache = model.new_cache(batch, max_length)
    # plain greedy: the model picks the argmax where it runs, so only token ids come back
    on_device = getattr(model, "device_greedy", False) and not do_sample and not processors \
        and not output_scores and not output_logits
    extra = ({"greedy": True} if on_device else {}) | ({"features": features} if features is not None else {})
    logits = model.prefill(ids, mask, positions, cache, **extra)
    if streamer is not None:
        streamer.put(ids)
    unfinished = np.ones(batch, bool)
    all_scores, all_logits = [], []
    last_pos = positions[:, -1]
    steps = None  # on_device: the model's self-feeding greedy steps
    while True:
        if on_device:
            nxt = np.asarray(logits, np.int64)
        else:
            raw = np.asarray(logits, np.float32)
            scores = apply_processors(processors, ids, raw)
            if output_scores:
                all_scores.append(scores)
            if output_logits:
                all_logits.append(raw)
            nxt = _sample(softmax(scores), rng) if do_sample else np.argmax(scores, axis=-1).astype(np.int64)
        if eos:
            nxt = np.where(unfinished, nxt, pad)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        if eos:
            unfinished &= ~np.isin(nxt, eos)
        if streamer is not None:
            streamer.put(nxt)
        if not unfinished.any() or ids.shape[1] >= max_length:
            break
        last_pos = last_pos + 1
        if on_device:
            if steps is None:
                steps = model.greedy_steps(cache, nxt, last_pos, unfinished, eos, pad,
                                           count=max_length - ids.shape[1])
            logits = next(steps)
        else:
            logits = model.decode(nxt, last_pos, cache)
    if streamer is not None:
        streamer.end()
    if return_dict_in_generate:
        return GenerateOutput(ids, tuple(all_scores) if output_scores else None,
                              tuple(all_logits) if output_logits else None)
    return ids
