"""Transformer blocks: residual sublayers (self-attention, optional cross-attention, MLP), each with
its norm before the sublayer (pre-norm: x + f(norm(x))) or after the residual (post-norm: norm(x + f(x)))."""

from __future__ import annotations

from kiln.ir import Graph, Value

from .module import Module


class TransformerBlock(Module):
    def __init__(self, attn_norm: Module, attn: Module, mlp_norm: Module, mlp: Module, *, post_norm: bool = False,
                 cross_norm: Module | None = None, cross: Module | None = None):
        super().__init__("", attn.dtype)
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp
        self.cross_norm, self.cross, self.post_norm = cross_norm, cross, post_norm

    def __call__(self, g: Graph, x: Value, *, memory: tuple | None = None, group: int = 1, **attn_kw) -> Value:
        """`attn_kw` go to the self-attention (mask, rope_tables, cache); `memory` = cross K/V."""
        x = self.residual(g, x, self.attn_norm, lambda h: self.attn(g, h, **attn_kw))
        if self.cross is not None:
            x = self.residual(g, x, self.cross_norm, lambda h: self.cross(g, h, *memory, group=group))
        return self.residual(g, x, self.mlp_norm, lambda h: self.mlp(g, h))

    def residual(self, g: Graph, x: Value, norm: Module, f) -> Value:
        return norm(g, f(x) + x) if self.post_norm else x + f(norm(g, x))
