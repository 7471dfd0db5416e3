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

Two options serve families beyond the plain decoder (both off by default):
* KV sharing: after `attend` for a layer, `attend_shared(g, attn, q, source)` attends with the
  keys/values layer `source` attended with (prompt: its k/v; decode: its whole cache), writing
  nothing (Gemma 4's last layers reuse an earlier layer's cache).
* `PromptCache(..., blocks=ids)`: ids [B, S] int64 number runs of tokens (an image's tokens;
  -1 elsewhere) that also attend to each other bidirectionally, on top of the causal and window
  rules (HF's blockwise overlay: allowed = padding & ((causal & window) | same block)); with
  `block_layers="sliding"` only windowed layers get it, inside the window (allowed = padding &
  window & (causal | same block), HF's Gemma 4 vision mask) and full layers stay causal.
A cache's layers may differ in kv heads and head dim: a state takes the shape of what is written.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Value
from kiln.ir.ops.attention import allowed_positions
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
        b, _, length, _ = self.shape
        for kind, new in (("key", k), ("value", v)):
            shape = (b, new.shape[1], length, new.shape[3])
            state = g.state(cache_name(layer, kind), shape, self.dtype)
            out.append(g.assign(state, g.cache_write(state, new, position, axis=2)))
        return out[0], out[1]


class PromptCache:
    def __init__(self, g: Graph, attention_mask: Value, cache_len: int | None = None, *, kv_heads: int = 0,
                 head_dim: int = 0, dtype: str = "float32", blocks: Value | None = None,
                 block_layers: str = "all"):
        b, s = attention_mask.shape
        self.keep = g.reshape(g.greater(attention_mask, g.scalar(0, "int64")), shape=[b, 1, 1, s])
        self.blocks, self.block_masks, self.seen = blocks, {}, {}
        if block_layers not in ("all", "sliding"):
            raise ValueError(f"block_layers must be 'all' or 'sliding', got {block_layers!r}")
        self.block_layers = block_layers
        if blocks is not None:
            if blocks.shape != (b, s):
                raise ValueError(f"block ids {blocks.shape} must have the attention mask's shape {(b, s)}")
            ids = g.reshape(blocks, shape=[b, 1, s, 1])
            self.same_block = g.logical_and(g.equal(ids, g.reshape(blocks, shape=[b, 1, 1, s])),
                                            g.greater_equal(ids, g.scalar(0, "int64")))
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
        self.seen[attn.layer] = (k, v)
        return self._attend(g, attn, q, k, v)

    def attend_shared(self, g: Graph, attn, q: Value, source: int) -> Value:
        """Attention with the keys/values layer `source` attended with (KV sharing; writes nothing)."""
        return self._attend(g, attn, q, *self.seen[source])

    def _attend(self, g: Graph, attn, q: Value, k: Value, v: Value) -> Value:
        if self.blocks is None or not attn.causal or (self.block_layers == "sliding" and attn.window is None):
            return attn.attend(g, q, k, v, self.keep)
        return attn.attend(g, q, k, v, self.block_mask(g, attn.window), positional=False)

    def block_mask(self, g: Graph, window: int | None) -> Value:
        """[B, 1, S, S] bool: padding & ((causal & window) | same block), or with block_layers="sliding"
        padding & window & (causal | same block), the window bounding keys from below only."""
        if window not in self.block_masks:
            s = self.keep.shape[-1]
            if self.block_layers == "all":
                causal = g.constant(allowed_positions(s, s, True, window)[None, None], name="causal_window")
                self.block_masks[window] = g.logical_and(self.keep, g.logical_or(causal, self.same_block))
            else:
                q, k = np.arange(s)[:, None], np.arange(s)[None, :]
                band = g.constant((k > q - window)[None, None], name="window_band")
                causal = g.constant((k <= q)[None, None], name="causal")
                self.block_masks[window] = g.logical_and(g.logical_and(self.keep, band),
                                                         g.logical_or(causal, self.same_block))
        return self.block_masks[window]


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
        self.seen: dict[int, tuple[Value, Value]] = {}

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
        self.seen[attn.layer] = (k_all, v_all)
        return attn.attend(g, q, k_all, v_all, self.mask(g, attn.window), positional=False)

    def attend_shared(self, g: Graph, attn, q: Value, source: int) -> Value:
        """Attention over layer `source`'s cache (KV sharing; writes nothing)."""
        return attn.attend(g, q, *self.seen[source], self.mask(g, attn.window), positional=False)


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
