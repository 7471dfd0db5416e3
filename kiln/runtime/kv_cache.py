"""The static KV cache of decoder-only LMs: graph states that prefill and decode graphs share.

Why static: kiln graphs have static shapes, so the cache is allocated once at its final
length `max_len` ([batch, kv_heads, max_len, head_dim] per layer, plus a [batch, max_len]
slot mask) and one compiled decode graph serves every step of a generation. The buffers
are states of the compiled graphs (`Graph.state`): they live where the backend lives (on
the GPU for `device="cuda"`), the decode graph writes the new token's key, value and mask
slot in place (`cache_write`), and the prefill graph of the same (batch, max_len) shares
the buffers. Slots past `length` hold stale values that the mask keeps out of attention.

State names (every decoder family follows them): `cache.{i}.key`, `cache.{i}.value`
(model dtype) and `cache.mask` (int64, 1 where a slot holds a real token).
"""

from __future__ import annotations

MASK = "cache.mask"


def cache_name(layer: int, kind: str) -> str:
    """The state holding layer `layer`'s keys (kind "key") or values (kind "value")."""
    return f"cache.{layer}.{kind}"


class StaticKVCache:
    """One generation's position in a static cache: `length` slots written of `max_len`.

    The buffers themselves are states of the model's compiled graphs for (batch, max_len).
    """

    def __init__(self, batch: int, max_len: int):
        if min(batch, max_len) < 1:
            raise ValueError(f"cache dimensions must be positive: batch={batch}, max_len={max_len}")
        self.batch, self.max_len = batch, max_len
        self.length = 0

    def start(self, prompt_len: int) -> None:
        """A prefill of `prompt_len` tokens fills slots [0, prompt_len)."""
        if self.length != 0:
            raise ValueError(f"prefill writes an empty cache, but {self.length} slots are already filled")
        if prompt_len > self.max_len:
            raise ValueError(f"prompt of {prompt_len} tokens does not fit a cache of max_len {self.max_len}")
        self.length = prompt_len

    def next_slot(self) -> int:
        """The slot a decode step writes; advances `length`."""
        if self.length >= self.max_len:
            raise ValueError(f"the KV cache is full ({self.max_len} slots)")
        self.length += 1
        return self.length - 1

