"""The graph side of KV caches: what a self-attention block attends with, and what it writes.

A cache object is passed to `Attention(..., cache=...)`; its `attend(g, attn, q, k, v)` gets
the block's fresh q/k/v [B, H, S, D] and returns the attention output. Every decoder family
uses these, so the runtime's state names and masking rules (kiln.runtime.kv_cache) live here:

* `PromptCache` (prefill): attends over the prompt's own k/v with its padding mask
  (`attention_mask` [B, S]) and the block's causal and window rules. With a cache length L it also declares the cache states
  (`cache.mask` [B, L] int64, `cache.{i}.key/value` [B, Hkv, L, D]), writes the prompt's
  k/v at slot 0 and sets the mask to the attention mask padded with zeros to L.
* `DecodeCache` (one token against the cache): input `cache_position` [1] (the slot),
  writes 1 into `cache.mask[:, slot]` and the new k/v at the slot, and attends over the
  cache under the mask (real tokens at slots <= slot, within the block's sliding window).
* `SlotCache` (rows that all hold the same number of tokens, like Whisper's hypotheses):
  states `cache.{i}.key/value` [rows, H, L, D], input `cache_position` [1]; the S new tokens
  are written at slots [p, p + S) and query t attends to slots <= p + t. One graph kind
  serves the prompt and each later step; no mask state is needed.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Value
from kiln.runtime.kv_cache import MASK, cache_name


class _States:
    """The cache states of one (batch, length): each layer's keys and values (and the slot mask)."""

    def __init__(self, g: Graph, batch: int, length: int, kv_heads: int, head_dim: int, dtype: str,
                 slot_mask: bool = True):
        self.shape, self.dtype = (batch, kv_heads, length, head_dim), dtype
        self.mask = g.state(MASK, (batch, length), "int64") if slot_mask else None

    def write(self, g: Graph, layer: int, k: Value, v: Value, position: Value) -> tuple[Value, Value]:
        """Write k/v [B, Hkv, S, D] at slots [position, position + S); the whole updated cache."""
        out = []
        for kind, new in (("key", k), ("value", v)):
            state = g.state(cache_name(layer, kind), self.shape, self.dtype)
            out.append(g.assign(state, g.cache_write(state, new, position, axis=2)))
        return out[0], out[1]


class PromptCache:
    def __init__(self, g: Graph, attention_mask: Value, cache_len: int | None = None, *, kv_heads: int = 0,
                 head_dim: int = 0, dtype: str = "float32"):
        b, s = attention_mask.shape
        self.keep = g.reshape(g.greater(attention_mask, g.scalar(0, "int64")), shape=[b, 1, 1, s])
        self.states = None
        if cache_len is not None:
            if s > cache_len:
                raise ValueError(f"a prompt of {s} tokens does not fit a cache of {cache_len} slots")
            self.states = _States(g, b, cache_len, kv_heads, head_dim, dtype)
            filled = attention_mask if cache_len == s else g.concat(
                [attention_mask, g.constant(np.zeros((b, cache_len - s), np.int64), name="cache_empty")], axis=1)
            g.assign(self.states.mask, filled)
            self.start = g.constant(np.zeros(1, np.int64), name="cache_start")

    def attend(self, g: Graph, attn, q: Value, k: Value, v: Value) -> Value:
        if self.states is not None:
            self.states.write(g, attn.layer, k, v, self.start)
        return attn.attend(g, q, k, v, self.keep)


class DecodeCache:
    def __init__(self, g: Graph, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype: str):
        self.states = _States(g, batch, max_len, kv_heads, head_dim, dtype)
        self.batch, self.max_len = batch, max_len
        self.slot = g.input("cache_position", (1,), "int64")
        filled = g.cache_write(self.states.mask, g.constant(np.ones((batch, 1), np.int64), name="cache_filled"),
                               self.slot, axis=1)
        g.assign(self.states.mask, filled)
        self.slots = g.constant(np.arange(max_len, dtype=np.int64), name="cache_slots")
        self.visible = g.logical_and(g.greater(filled, g.scalar(0, "int64")), g.less_equal(self.slots, self.slot))
        self.masks: dict[int | None, Value] = {}

    def mask(self, g: Graph, window: int | None) -> Value:
        """[B, 1, 1, L] bool: real tokens at slots <= the written one (and, with a window, within it)."""
        if window not in self.masks:
            m = self.visible
            if window is not None:  # HF: key slot j is visible from slot p when p - j < window
                m = g.logical_and(m, g.less(g.sub(self.slot, self.slots), g.scalar(window, "int64")))
            self.masks[window] = g.reshape(m, shape=[self.batch, 1, 1, self.max_len])
        return self.masks[window]

    def attend(self, g: Graph, attn, q: Value, k: Value, v: Value) -> Value:
        k_all, v_all = self.states.write(g, attn.layer, k, v, self.slot)
        return attn.attend(g, q, k_all, v_all, self.mask(g, attn.window), positional=False)


class SlotCache:
    def __init__(self, g: Graph, rows: int, seq: int, length: int, heads: int, head_dim: int, dtype: str):
        if not 1 <= seq <= length:
            raise ValueError(f"{seq} new tokens do not fit a cache of {length} slots")
        self.states = _States(g, rows, length, heads, head_dim, dtype, slot_mask=False)
        self.position = g.input("cache_position", (1,), "int64")
        slots = g.constant(np.arange(length, dtype=np.int64)[None, :], name="cache_slots")        # [1, L]
        last = g.add(self.position, g.constant(np.arange(seq, dtype=np.int64)[:, None], name="cache_rows"))
        self.mask = g.reshape(g.less_equal(slots, last), shape=[1, 1, seq, length])               # slot <= p + t

    def attend(self, g: Graph, attn, q: Value, k: Value, v: Value) -> Value:
        k_all, v_all = self.states.write(g, attn.layer, k, v, self.position)
        return attn.attend(g, q, k_all, v_all, self.mask, positional=False)
