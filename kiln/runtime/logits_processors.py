"""Logits processors with HF transformers' semantics, on NumPy float32 scores [batch, vocab].

Each processor is `(input_ids [batch, cur_len], scores) -> scores`. `build_processors`
assembles them in the order HF's `GenerationMixin._get_logits_processor` does
(repetition penalty, min-new-tokens, then the sampling warpers temperature, top-k,
top-p), because the order changes the result (top-p after temperature is not
top-p before it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NEG_INF = np.float32(-np.inf)


class RepetitionPenalty:
    """Divide positive (multiply negative) logits of tokens already in the sequence by `penalty`.

    As HF (>= 5), the left padding of each row (`prompt_ignore_length[b]` leading slots) is ignored.
    """

    def __init__(self, penalty: float, prompt_ignore_length: np.ndarray | None = None):
        if not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"repetition_penalty must be a strictly positive float, got {penalty!r}")
        self.penalty = np.float32(penalty)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        for b in range(scores.shape[0]):
            start = 0 if self.prompt_ignore_length is None else int(self.prompt_ignore_length[b])
            ids = input_ids[b, start:]
            s = scores[b, ids]
            out[b, ids] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return out


class MinNewTokens:
    """Forbid EOS until `min_new_tokens` tokens have been generated."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_ids: Sequence[int]):
        if not isinstance(min_new_tokens, int) or min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be a non-negative integer, got {min_new_tokens!r}")
        self.prompt_length, self.min_new_tokens, self.eos = prompt_length, min_new_tokens, list(eos_token_ids)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] - self.prompt_length < self.min_new_tokens:
            scores = scores.copy()
            scores[:, self.eos] = NEG_INF
        return scores


class Temperature:
    def __init__(self, temperature: float):
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a strictly positive float, got {temperature!r}; "
                             f"for greedy decoding use do_sample=False")
        self.temperature = np.float32(temperature)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores / self.temperature


class TopK:
    """Keep the k highest logits per row (ties with the k-th are kept), set the rest to -inf."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if not isinstance(top_k, (int, np.integer)) or top_k <= 0:
            raise ValueError(f"top_k must be a strictly positive integer, got {top_k!r}")
        self.top_k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        k = min(self.top_k, scores.shape[-1])
        kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1:k]
        return np.where(scores < kth, NEG_INF, scores)


class TopP:
    """Nucleus filtering: drop the lowest-probability tokens whose total mass is at most 1 - top_p."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        if not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be a float in [0, 1], got {top_p!r}")
        self.top_p, self.min_tokens_to_keep = float(top_p), min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as HF
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        cumulative = np.cumsum(softmax(sorted_scores), axis=-1)
        remove_sorted = cumulative <= np.float32(1 - self.top_p)
        remove_sorted[:, -self.min_tokens_to_keep:] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        return np.where(remove, NEG_INF, scores)


def softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(x - m)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32, copy=False)


def build_processors(*, do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                     repetition_penalty: float | None, min_new_tokens: int | None, eos_token_ids: Sequence[int],
                     prompt_length: int, padding_lengths: np.ndarray | None) -> list:
    """The processors HF would apply for these settings, in HF's order."""
    procs: list = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(repetition_penalty, padding_lengths))
    if min_new_tokens and eos_token_ids:
        procs.append(MinNewTokens(prompt_length, min_new_tokens, eos_token_ids))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            procs.append(Temperature(temperature))
        if top_k is not None and top_k != 0:
            procs.append(TopK(top_k))
        if top_p is not None and top_p < 1.0:
            procs.append(TopP(top_p))
    return procs


def apply_processors(processors: Sequence, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    for p in processors:
        scores = p(input_ids, scores)
    return scores
