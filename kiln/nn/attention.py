"""Self- and cross-attention blocks: projections, heads, optional q/k norm and RoPE, attention, output.

Self-attention covers MHA, GQA and MQA (`kv_heads` <= `heads`), causal or bidirectional,
a sliding window, logit softcapping and a scale override, with one fused Q/K/V projection
(the default: one matmul instead of three) or three. With a `cache` (see `kv_cache`), the
cache decides what the new keys/values are attended with; the block only projects.
"""

from __future__ import annotations

from typing import Mapping

from kiln.ir import Graph, Value

from .linear import Linear
from .module import Module
from .norm import RMSNorm
from .rope import Rope

NAMES = {"qkv": "qkv_proj", "q": "q_proj", "k": "k_proj", "v": "v_proj", "kv": "kv_proj", "out": "o_proj",
         "q_norm": "q_norm", "k_norm": "k_norm"}


def split_heads(g: Graph, t: Value, heads: int, head_dim: int) -> Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, _ = t.shape
    return g.transpose(g.reshape(t, shape=[b, s, heads, head_dim]), perm=[0, 2, 1, 3])


def merge_heads(g: Graph, t: Value) -> Value:
    """[B, H, S, D] -> [B, S, H*D]."""
    b, h, s, d = t.shape
    return g.reshape(g.transpose(t, perm=[0, 2, 1, 3]), shape=[b, s, h * d])


class Attention(Module):
    """Self-attention over x [B, S, dim]; `layer` numbers it for a KV cache's names."""

    def __init__(self, name: str, dim: int, heads: int, kv_heads: int | None = None, head_dim: int | None = None,
                 *, qkv_bias: bool = False, out_bias: bool = False, fused_qkv: bool = True, causal: bool = False,
                 window: int | None = None, softcap: float | None = None, scale: float | None = None,
                 qk_norm_eps: float | None = None, qk_norm_unit_offset: bool = False, rope: Rope | None = None,
                 layer: int | None = None, names: Mapping[str, str] | None = None, out_dim: int | None = None,
                 dtype="float32"):
        super().__init__(name, dtype)
        kv_heads = heads if kv_heads is None else kv_heads
        head_dim = dim // heads if head_dim is None else head_dim
        if heads % kv_heads:
            raise ValueError(f"Attention {name!r}: {heads} query heads are not a multiple of {kv_heads} kv heads")
        self.heads, self.kv_heads, self.head_dim, self.layer = heads, kv_heads, head_dim, layer
        self.causal, self.window, self.softcap, self.scale, self.rope = causal, window, softcap, scale, rope
        n = {**NAMES, **(names or {})}
        self.sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        if fused_qkv:
            self.qkv = Linear(f"{name}.{n['qkv']}", dim, sum(self.sizes), qkv_bias, parts=self.sizes, dtype=dtype)
        else:
            self.q, self.k, self.v = (Linear(f"{name}.{n[p]}", dim, size, qkv_bias, dtype=dtype)
                                      for p, size in zip("qkv", self.sizes))
        self.fused_qkv = fused_qkv
        self.out = Linear(f"{name}.{n['out']}", self.sizes[0], out_dim or dim, out_bias, dtype=dtype)
        self.q_norm = self.k_norm = None
        if qk_norm_eps is not None:
            self.q_norm, self.k_norm = (RMSNorm(f"{name}.{n[p]}", head_dim, qk_norm_eps,
                                                add_unit_offset=qk_norm_unit_offset, dtype=dtype)
                                        for p in ("q_norm", "k_norm"))

    def __call__(self, g: Graph, x: Value, *, mask: Value | None = None, rope_tables=None, cache=None,
                 key: Value | None = None, value: Value | None = None) -> Value:
        """`key` / `value` (with fused_qkv=False): project K and V from other inputs than x (SAM's
        attention, whose queries, keys and values each carry different position terms)."""
        q, k, v = self.project(g, x, rope_tables, key=key, value=value)
        o = cache.attend(g, self, q, k, v) if cache is not None else self.attend(g, q, k, v, mask)
        return self.out(g, merge_heads(g, o))

    def project(self, g: Graph, x: Value, rope_tables=None, *, key: Value | None = None,
                value: Value | None = None) -> tuple[Value, Value, Value]:
        """q [B, H, S, D] and k, v [B, Hkv, S, D]: projected, q/k-normed and rotated."""
        if self.fused_qkv:
            if key is not None or value is not None:
                raise ValueError(f"Attention {self.name!r}: separate key/value inputs need fused_qkv=False")
            q, k, v = g.split(self.qkv(g, x), sizes=list(self.sizes), axis=-1)
        else:
            q, k, v = self.q(g, x), self.k(g, x if key is None else key), self.v(g, x if value is None else value)
        q, k, v = (g.reshape(t, shape=[*t.shape[:2], n, self.head_dim])
                   for t, n in ((q, self.heads), (k, self.kv_heads), (v, self.kv_heads)))
        if self.q_norm is not None:
            q, k = self.q_norm(g, q), self.k_norm(g, k)
        q, k, v = (g.transpose(t, perm=[0, 2, 1, 3]) for t in (q, k, v))
        if self.rope is not None:
            if rope_tables is None:
                raise ValueError(f"Attention {self.name!r} applies RoPE: pass rope_tables=rope.tables(g, positions)")
            q, k = self.rope(g, q, rope_tables), self.rope(g, k, rope_tables)
        return q, k, v

    def attend(self, g: Graph, q: Value, k: Value, v: Value, mask: Value | None = None, *,
               positional: bool = True) -> Value:
        """softmax(q k^T) v with this block's scale and softcap, under `mask` and, when `positional`, the
        block's causal and window rules (a cache that builds them into its mask passes positional=False)."""
        return g.attention(q, k, v, mask, causal=self.causal and positional, window=self.window if positional else None,
                           softcap=self.softcap, scale=self.scale)


class CrossAttention(Module):
    """Queries from x [rows, S, dim] attend over a memory's keys/values [B, H, M, D].

    `memory(g, m)` projects a memory once (with `kv_proj`; a family may instead fuse every
    layer's K/V projection into one matmul). `out_proj=False` returns the merged heads as they are
    (V-JEPA 2's attentive pooler has no output projection). With `group` > 1, rows are B utterance-major groups
    of hypotheses (beams) sharing one memory: they become extra query rows, K/V are not copied.
    """

    def __init__(self, name: str, dim: int, heads: int, head_dim: int | None = None, *, memory_dim: int | None = None,
                 bias: bool = True, kv_bias: bool | None = None, out_bias: bool = True, kv_proj: bool = True,
                 out_proj: bool = True, scale: float | None = None, names: Mapping[str, str] | None = None, dtype="float32"):
        super().__init__(name, dtype)
        n = {**NAMES, "out": "out_proj", **(names or {})}
        self.heads, self.head_dim, self.scale = heads, dim // heads if head_dim is None else head_dim, scale
        inner = heads * self.head_dim
        self.q = Linear(f"{name}.{n['q']}", dim, inner, bias, dtype=dtype)
        self.kv = None
        if kv_proj:
            self.kv = Linear(f"{name}.{n['kv']}", memory_dim or dim, 2 * inner, bias if kv_bias is None else kv_bias,
                             parts=(inner, inner), dtype=dtype)
        self.out = Linear(f"{name}.{n['out']}", inner, dim, out_bias, dtype=dtype) if out_proj else None

    def memory(self, g: Graph, m: Value) -> tuple[Value, Value]:
        if self.kv is None:
            raise ValueError(f"CrossAttention {self.name!r} has no K/V projection (kv_proj=False)")
        k, v = g.split(self.kv(g, m), sizes=list(self.kv.parts), axis=-1)
        return split_heads(g, k, self.heads, self.head_dim), split_heads(g, v, self.heads, self.head_dim)

    def __call__(self, g: Graph, x: Value, k: Value, v: Value, group: int = 1) -> Value:
        rows, s, _ = x.shape
        nh, hd = self.heads, self.head_dim
        q = self.q(g, x)
        out = self.out or (lambda g_, t: t)
        if group == 1:
            return out(g, merge_heads(g, g.attention(split_heads(g, q, nh, hd), k, v, scale=self.scale)))
        batch = rows // group
        q = g.reshape(g.transpose(g.reshape(q, shape=[batch, group, s, nh, hd]), perm=[0, 3, 1, 2, 4]),
                      shape=[batch, nh, group * s, hd])
        a = g.attention(q, k, v, scale=self.scale)  # [batch, nh, group * s, hd]
        a = g.transpose(g.reshape(a, shape=[batch, nh, group, s, hd]), perm=[0, 2, 3, 1, 4])
        return out(g, g.reshape(a, shape=[rows, s, nh * hd]))
