"""Tanh soft-capping: cap * tanh(x / cap) bounds values to (-cap, cap) smoothly (Gemma 2/3's final logits;
attention-logit capping is the `softcap` option of the attention op)."""

from __future__ import annotations

from kiln.ir import Graph, Value


def softcap(g: Graph, x: Value, cap: float | None) -> Value:
    """x itself when `cap` is None."""
    if cap is None:
        return x
    c = g.scalar(cap, x.dtype.name)
    return g.tanh(x / c) * c
