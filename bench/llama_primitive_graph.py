"""A Llama-shaped decoder graph written only from primitive ops, so the optimizer has to find the fusions.

Matmuls against transposed [out, in] weights, RMSNorm as x * rsqrt(mean(x*x) + eps) * w,
softmax as exp/sum/div with max subtraction, SiLU as x * sigmoid(x), RoPE by slicing,
GQA by repeating k/v heads. The defaults are SmolLM2-135M's dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import Graph


@dataclass(frozen=True)
class LlamaDims:
    layers: int = 30
    hidden: int = 576
    heads: int = 9
    kv_heads: int = 3
    head_dim: int = 64
    intermediate: int = 1536
    vocab: int = 49152
    rms_eps: float = 1e-5
    rope_theta: float = 100000.0
    tied_embeddings: bool = True


SMOLLM2_135M = LlamaDims()
TINY = LlamaDims(layers=2, hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=48, vocab=64)


def rope_tables(seq: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.arange(seq, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def build(dims: LlamaDims = SMOLLM2_135M, batch: int = 1, seq: int = 16) -> Graph:
    d = dims
    g = Graph("llama_primitive")
    ids = g.input("input_ids", (batch, seq), "int64")
    embed = g.parameter("model.embed_tokens.weight", (d.vocab, d.hidden))
    cos_np, sin_np = rope_tables(seq, d.head_dim, d.rope_theta)
    cos, sin = g.constant(cos_np, name="rope_cos"), g.constant(sin_np, name="rope_sin")
    mask_np = np.triu(np.full((seq, seq), np.finfo(np.float32).min, np.float32), 1)[None, None]
    mask = g.constant(mask_np, name="causal_mask")
    eps = g.scalar(d.rms_eps)
    scale = g.scalar(d.head_dim ** -0.5)
    half = d.head_dim // 2

    def rms_norm(x, name):
        w = g.parameter(name, (d.hidden,))
        ms = g.mean(x * x, axes=[-1], keepdims=True)
        return w * (x * g.rsqrt(ms + eps))

    def proj(x, name, out_dim, in_dim):
        w = g.parameter(name, (out_dim, in_dim))
        return g.matmul(x, g.transpose(w, perm=[1, 0]))

    def heads(x, n):
        return g.transpose(g.reshape(x, shape=[batch, seq, n, d.head_dim]), perm=[0, 2, 1, 3])

    def rope(x):
        x1 = g.slice(x, axes=[-1], starts=[0], ends=[half])
        x2 = g.slice(x, axes=[-1], starts=[half], ends=[d.head_dim])
        rotated = g.concat([-x2, x1], axis=-1)
        return x * cos + rotated * sin

    def softmax(s):
        e = g.exp(s - g.max(s, axes=[-1], keepdims=True))
        return e / g.sum(e, axes=[-1], keepdims=True)

    x = g.embedding(ids, embed)
    rep = d.heads // d.kv_heads
    for i in range(d.layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, p + "input_layernorm.weight")
        q = rope(heads(proj(h, p + "self_attn.q_proj.weight", d.heads * d.head_dim, d.hidden), d.heads))
        k = rope(heads(proj(h, p + "self_attn.k_proj.weight", d.kv_heads * d.head_dim, d.hidden), d.kv_heads))
        v = heads(proj(h, p + "self_attn.v_proj.weight", d.kv_heads * d.head_dim, d.hidden), d.kv_heads)
        k = g.repeat_interleave(k, repeats=rep, axis=1)
        v = g.repeat_interleave(v, repeats=rep, axis=1)
        scores = g.matmul(q, g.transpose(k, perm=[0, 1, 3, 2])) * scale + mask
        o = g.matmul(softmax(scores), v)
        o = g.reshape(g.transpose(o, perm=[0, 2, 1, 3]), shape=[batch, seq, d.heads * d.head_dim])
        x = x + proj(o, p + "self_attn.o_proj.weight", d.hidden, d.heads * d.head_dim)
        h = rms_norm(x, p + "post_attention_layernorm.weight")
        gate = proj(h, p + "mlp.gate_proj.weight", d.intermediate, d.hidden)
        up = proj(h, p + "mlp.up_proj.weight", d.intermediate, d.hidden)
        act = gate * g.sigmoid(gate) * up
        x = x + proj(act, p + "mlp.down_proj.weight", d.hidden, d.intermediate)
    x = rms_norm(x, "model.norm.weight")
    head = embed if d.tied_embeddings else g.parameter("lm_head.weight", (d.vocab, d.hidden))
    g.output("logits", g.matmul(x, g.transpose(head, perm=[1, 0])))
    return g


def random_params(graph: Graph, seed: int = 0, std: float = 0.05) -> dict[str, np.ndarray]:
    """Random weights for every parameter; norm weights near 1 so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in graph.parameters.items():
        if name.endswith("norm.weight"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        else:
            out[name] = (std * rng.standard_normal(v.shape)).astype(np.float32)
    return out
