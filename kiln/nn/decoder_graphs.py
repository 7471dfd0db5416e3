"""The prefill and decode graphs of a decoder-only LM: what `CausalLM` compiles (its `DecoderGraphs`).

A family's network is a Module called as `model(g, ids, positions, cache, last_only, features=...)`
returning float32 logits; the KV cache object decides what attention sees (kiln.nn.kv_cache).
The graphs' inputs, outputs and states are the contract in kiln/runtime/language_model.py.
"""

from __future__ import annotations

from kiln.ir import Graph, as_dtype

from .features import feature_inputs
from .kv_cache import DecodeCache, PromptCache


class DecoderGraphs:
    """Prefill and decode graph builders for one network, config and dtype.

    `config` needs model_type, hidden_size, num_hidden_layers, vocab_size and (unless given here)
    num_key_value_heads and head_dim: the sizes the KV cache and the runtime use. A family whose
    prompt cache differs (extra inputs, per-layer shapes) overrides `prompt_cache`."""

    def __init__(self, config, model, dtype: str = "float32", *, kv_heads: int | None = None,
                 head_dim: int | None = None):
        self.config, self.model, self.dtype = config, model, as_dtype(dtype).name
        self.num_layers, self.vocab_size = config.num_hidden_layers, config.vocab_size
        self.num_kv_heads = config.num_key_value_heads if kv_heads is None else kv_heads
        self.head_dim = config.head_dim if head_dim is None else head_dim

    def prompt_cache(self, g: Graph, mask, cache_len: int | None, features: bool) -> PromptCache:
        """The cache a prompt writes (and its mask rules); `features`: the prefill takes encoder features."""
        return PromptCache(g, mask, cache_len, kv_heads=self.num_kv_heads, head_dim=self.head_dim, dtype=self.dtype)

    def prefill_graph(self, batch: int, seq: int, last_only: bool = False, cache_len: int | None = None,
                      features: bool = False) -> Graph:
        """Logits of a prompt of S tokens; with `cache_len`, its keys/values fill the cache states' first S slots.

        With `features`, rows of an `inputs_embeds` input replace the token embeddings where `embeds_mask`
        is set (an encoder's features at their placeholder tokens; kiln.nn.features)."""
        g = Graph(f"{self.config.model_type}_prefill_b{batch}_s{seq}" + (f"_l{cache_len}" if cache_len else "")
                  + ("_features" if features else ""))
        ids = g.input("input_ids", (batch, seq), "int64")
        mask = g.input("attention_mask", (batch, seq), "int64")
        pos = g.input("position_ids", (batch, seq), "int64")
        feats = feature_inputs(g, batch, seq, self.config.hidden_size, self.dtype) if features else None
        cache = self.prompt_cache(g, mask, cache_len, features)
        g.output("logits", self.model(g, ids, pos, cache, last_only, features=feats))
        return g

    def decode_graph(self, batch: int, max_len: int) -> Graph:
        """One new token per row against the cache states (max_len slots); writes its k/v at cache_position."""
        g = Graph(f"{self.config.model_type}_decode_b{batch}_l{max_len}")
        ids = g.input("input_ids", (batch, 1), "int64")
        pos = g.input("position_ids", (batch, 1), "int64")
        cache = DecodeCache(g, batch, max_len, self.num_kv_heads, self.head_dim, self.dtype)
        g.output("logits", self.model(g, ids, pos, cache))
        return g
