"""A static key/value cache for decoder-only LMs: fixed-size arrays that decode graphs read and rewrite.

Why static: kiln graphs have static shapes, so the cache is allocated once at its
final length `max_len` ([batch, kv_heads, max_len, head_dim] per layer) and the
decode graph takes it as inputs and returns the updated arrays. One compiled
decode graph then serves every step of a generation. Slots past `length` hold
zeros; an attention mask over the cache (1 where a slot holds a real token)
keeps padding and empty slots out of attention.

Graph I/O names (every decoder family follows them): `past.{i}.key` /
`past.{i}.value` are decode inputs, `present.{i}.key` / `present.{i}.value`
the outputs (prefill graphs return only the prompt's slots).
"""

from __future__ import annotations

import numpy as np


def past_name(layer: int, kind: str) -> str:
    return f"past.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


class StaticKVCache:
    """Per-layer key and value arrays of shape [batch, kv_heads, max_len, head_dim] plus a slot mask.

    `length` is the number of slots written (the next write position);
    `mask[b, j]` is 1 where sequence b has a real token in slot j.
    """

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype):
        if min(num_layers, batch, num_kv_heads, max_len, head_dim) < 1:
            raise ValueError(f"cache dimensions must be positive: layers={num_layers}, batch={batch}, "
                             f"kv_heads={num_kv_heads}, max_len={max_len}, head_dim={head_dim}")
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.num_layers, self.batch, self.max_len = num_layers, batch, max_len
        self.keys = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.mask = np.zeros((batch, max_len), np.int64)
        self.length = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.keys[0].shape

    def write_prefill(self, outputs: dict[str, np.ndarray], attention_mask: np.ndarray) -> None:
        """Store a prefill graph's `present.*` outputs (the prompt's S slots) at slots [0, S)."""
        s = attention_mask.shape[1]
        if self.length != 0:
            raise ValueError(f"prefill writes an empty cache, but {self.length} slots are already filled")
        if s > self.max_len:
            raise ValueError(f"prompt of {s} tokens does not fit a cache of max_len {self.max_len}")
        for i in range(self.num_layers):
            for kind, store in (("key", self.keys), ("value", self.values)):
                arr = outputs[present_name(i, kind)]
                if arr.shape[:2] != store[i].shape[:2] or arr.shape[2] != s or arr.shape[3] != store[i].shape[3]:
                    raise ValueError(f"{present_name(i, kind)} has shape {arr.shape}, expected "
                                     f"{store[i].shape[:2] + (s, store[i].shape[3])}")
                store[i][:, :, :s] = arr
        self.mask[:, :s] = attention_mask
        self.length = s

    def decode_inputs(self) -> dict[str, np.ndarray]:
        """The `past.*` inputs of a decode graph."""
        out = {}
        for i in range(self.num_layers):
            out[past_name(i, "key")] = self.keys[i]
            out[past_name(i, "value")] = self.values[i]
        return out

    def write_slot(self, outputs: dict[str, np.ndarray], new_mask: np.ndarray) -> None:
        """Copy slot `length` of a decode graph's `present.*` outputs (the one slot a step writes) into
        the cache; the outputs may then be reused buffers (`CompiledGraph.run_borrowed`)."""
        if self.length >= self.max_len:
            raise ValueError(f"the KV cache is full ({self.max_len} slots)")
        j = self.length
        for i in range(self.num_layers):
            self.keys[i][:, :, j] = outputs[present_name(i, "key")][:, :, j]
            self.values[i][:, :, j] = outputs[present_name(i, "value")][:, :, j]
        self.mask[:, j] = new_mask
        self.length += 1

    def advance(self, outputs: dict[str, np.ndarray], new_mask: np.ndarray) -> None:
        """Adopt a decode graph's `present.*` outputs, which hold one more slot (at `length`)."""
        if self.length >= self.max_len:
            raise ValueError(f"the KV cache is full ({self.max_len} slots)")
        for i in range(self.num_layers):
            self.keys[i] = outputs[present_name(i, "key")]
            self.values[i] = outputs[present_name(i, "value")]
        self.mask[:, self.length] = new_mask
        self.length += 1
