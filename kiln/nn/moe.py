"""Mixture-of-experts feed-forward: top-k routing weights and a bank of gated experts.

The experts run densely: every token goes through every expert and the routing weights (zero
outside a token's top k) mix the outputs. That is exact and needs no data-dependent shapes
(kiln graphs are static); it costs E/k times the routed FLOPs, so it suits small expert counts
and correctness work better than serving a large MoE fast.
"""

from __future__ import annotations

from kiln.ir import Graph, Value

from .mlp import gated_activation
from .module import Module, ParamSpec


def top_k_weights(g: Graph, probs: Value, k: int) -> Value:
    """probs [T, E] (each in [0, 1]) kept at each row's k largest entries, zero elsewhere (as torch.topk
    picks them, ties aside)."""
    t, e = probs.shape
    if not 1 <= k <= e:
        raise ValueError(f"top-{k} routing needs 1 <= k <= {e} experts")
    remaining, chosen = probs, None
    for _ in range(k):
        hot = g.one_hot(g.argmax(remaining, axis=-1), num_classes=e, dtype=probs.dtype.name)   # [T, E]
        chosen = hot if chosen is None else chosen + hot
        remaining = remaining - hot * g.scalar(2.0, probs.dtype.name)   # below every probability
    return probs * chosen


class Experts(Module):
    """E gated experts stored as HF does: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]."""

    def __init__(self, name: str, experts: int, dim: int, hidden: int, act: str = "gelu_tanh", dtype="float32"):
        super().__init__(name, dtype)
        self.experts, self.dim, self.hidden, self.act = experts, dim, hidden, act

    def own_params(self) -> dict[str, ParamSpec]:
        return {"gate_up_proj": ParamSpec((self.experts, 2 * self.hidden, self.dim), self.dtype),
                "down_proj": ParamSpec((self.experts, self.dim, self.hidden), self.dtype)}

    def __call__(self, g: Graph, x: Value, weights: Value) -> Value:
        """x [T, H] and routing weights [T, E] -> sum_e weights[:, e] * expert_e(x), [T, H]."""
        t, h = x.shape
        up = g.matmul(g.reshape(x, shape=[1, t, h]), self.param(g, "gate_up_proj"), transpose_b=True)  # [E, T, 2I]
        gate, lin = g.split(up, sizes=[self.hidden, self.hidden], axis=-1)
        out = g.matmul(gated_activation(g, gate, lin, self.act), self.param(g, "down_proj"), transpose_b=True)
        w = g.reshape(g.transpose(weights, perm=[1, 0]), shape=[self.experts, t, 1])
        if w.dtype.name != self.dtype:
            w = g.cast(w, dtype=self.dtype)
        return g.sum(out * w, axes=[0])
