"""Rotary position embeddings: the inverse-frequency table (default, linear, llama3 scaling),
cos/sin tables from explicit positions, and their application in the half or interleaved layout.

`partial_rotary_factor` < 1 rotates only the first `rotary_dim` dims of each head (the `rope`
op leaves the rest as they are). The half layout rotates pairs (i, i + rot/2) (HF); the
interleaved one pairs (2i, 2i + 1) (the original Meta/Mistral weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from kiln.io.errors import ConfigError
from kiln.ir import Graph, Value

ROPE_TYPES = ("default", "linear", "llama3")
LAYOUTS = ("half", "interleaved")


def cos_sin(g: Graph, angles: Value, dtype: str) -> tuple[Value, Value]:
    """cos and sin of float32 angles, in the model's dtype: the tables every RoPE rotates by."""
    cos, sin = g.cos(angles), g.sin(angles)
    if dtype != "float32":
        cos, sin = g.cast(cos, dtype=dtype), g.cast(sin, dtype=dtype)
    return cos, sin


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings (HF `rope_parameters`)."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    partial_rotary_factor: float = 1.0

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.partial_rotary_factor)

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """float32 [rot/2] inverse frequencies, computed as HF's rope init functions do (in float32)."""
        dim = self.rotary_dim(head_dim)
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv = (np.float32(1.0) / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.type == "linear":
            return (inv / np.float32(self.factor)).astype(np.float32)
        if self.type == "llama3":
            old_ctx = np.float32(self.original_max_position_embeddings)
            low_wavelen = old_ctx / np.float32(self.low_freq_factor)
            high_wavelen = old_ctx / np.float32(self.high_freq_factor)
            wavelen = np.float32(2 * math.pi) / inv
            scaled = np.where(wavelen > low_wavelen, inv / np.float32(self.factor), inv)
            smooth = (old_ctx / wavelen - np.float32(self.low_freq_factor)) / (
                np.float32(self.high_freq_factor) - np.float32(self.low_freq_factor))
            smoothed = (1 - smooth) * scaled / np.float32(self.factor) + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        if self.type != "default":
            raise ConfigError(f"rope type {self.type!r} is not supported; expected one of {ROPE_TYPES}")
        return inv

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], where: str = "config.json") -> "RopeConfig":
        """From a HF config (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
        params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rtype = params.get("rope_type", params.get("type", "default"))
        if rtype not in ROPE_TYPES:
            raise ConfigError(f"{where}: rope type {rtype!r} is not supported; expected one of {ROPE_TYPES}")
        partial = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0)
        rope = cls(theta=float(theta), type=rtype, partial_rotary_factor=partial)
        if rtype in ("linear", "llama3"):
            if "factor" not in params:
                raise ConfigError(f"{where}: rope type {rtype!r} needs a 'factor'")
            rope = replace(rope, factor=float(params["factor"]))
        if rtype == "llama3":
            missing = [k for k in ("low_freq_factor", "high_freq_factor") if k not in params]
            if missing:
                raise ConfigError(f"{where}: rope type 'llama3' needs {missing}")
            orig = params.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
            if orig is None:
                raise ConfigError(f"{where}: rope type 'llama3' needs 'original_max_position_embeddings'")
            rope = replace(rope, low_freq_factor=float(params["low_freq_factor"]),
                           high_freq_factor=float(params["high_freq_factor"]),
                           original_max_position_embeddings=int(orig))
        return rope


class Rope:
    """RoPE for heads of `head_dim`: `tables(g, positions)` once per graph, then `rope(g, x, tables)` per q/k."""

    def __init__(self, config: RopeConfig, head_dim: int, layout: str = "half", dtype="float32"):
        if layout not in LAYOUTS:
            raise ValueError(f"rope layout must be one of {LAYOUTS}, got {layout!r}")
        self.config, self.head_dim, self.layout, self.dtype = config, head_dim, layout, dtype
        self.inv_freq = config.inv_freq(head_dim)

    def tables(self, g: Graph, positions: Value) -> tuple[Value, Value]:
        """cos/sin(positions * inv_freq) [B, S, rot/2] (angles in float32, then the model dtype)."""
        b, s = positions.shape
        freqs = g.reshape(g.cast(positions, dtype="float32"), shape=[b, s, 1]) * g.constant(
            self.inv_freq, name="rope_inv_freq")
        return cos_sin(g, freqs, self.dtype)

    def __call__(self, g: Graph, x: Value, tables: tuple[Value, Value]) -> Value:
        """Rotate x [B, H, S, D] by the positions' angles."""
        cos, sin = tables
        return g.rope(x, cos, sin, layout=self.layout)
