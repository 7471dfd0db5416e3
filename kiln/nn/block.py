"""Transformer blocks: residual sublayers (self-attention, optional cross-attention, MLP), each with
its norm before the sublayer (pre-norm: x + f(norm(x))) or after the residual (post-norm: norm(x + f(x))).

Optional output norms (`attn_out_norm`, `mlp_out_norm`) also normalize a pre-norm sublayer's output
before the residual add, x + out_norm(f(norm(x))) (the "sandwich" of Gemma 2 and 3)."""

from __future__ import annotations

from kiln.ir import Graph, Value

from .module import Module


class TransformerBlock(Module):
    def __init__(self, attn_norm: Module, attn: Module, mlp_norm: Module, mlp: Module, *, post_norm: bool = False,
                 cross_norm: Module | None = None, cross: Module | None = None,
                 attn_out_norm: Module | None = None, mlp_out_norm: Module | None = None):
        super().__init__("", attn.dtype)
        if post_norm and (attn_out_norm is not None or mlp_out_norm is not None):
            raise ValueError("TransformerBlock: output norms apply to pre-norm blocks only (post_norm=False)")
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp
        self.cross_norm, self.cross, self.post_norm = cross_norm, cross, post_norm
        self.attn_out_norm, self.mlp_out_norm = attn_out_norm, mlp_out_norm

    def __call__(self, g: Graph, x: Value, *, memory: tuple | None = None, group: int = 1, **attn_kw) -> Value:
        """`attn_kw` go to the self-attention (mask, rope_tables, cache); `memory` = cross K/V."""
        x = self.residual(g, x, self.attn_norm, lambda h: self.attn(g, h, **attn_kw), self.attn_out_norm)
        if self.cross is not None:
            x = self.residual(g, x, self.cross_norm, lambda h: self.cross(g, h, *memory, group=group))
        return self.residual(g, x, self.mlp_norm, lambda h: self.mlp(g, h), self.mlp_out_norm)

    def residual(self, g: Graph, x: Value, norm: Module, f, out_norm: Module | None = None) -> Value:
        if self.post_norm:
            return norm(g, f(x) + x)
        h = f(norm(g, x))
        return x + (h if out_norm is None else out_norm(g, h))
