"""Tiny random Gemma, Gemma 2 and Gemma 3 checkpoints built with HF transformers and saved with `save_pretrained`.

HF's std-0.02 init makes attention near uniform and every norm near identity, which hides
mistakes in masks, RoPE, softcaps and norms; `redraw` gives each weight a scale at which every
feature changes the output measurably.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, vocab_size=96,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
SLIDING, FULL = "sliding_attention", "full_attention"

# name -> (config class, model class, config overrides)
VARIANTS = {
    # MQA, head_dim 16 != hidden / heads = 8, tied head
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(num_key_value_heads=1, rope_theta=100.0)),
    # window 4 on the even layers, small caps and a query scalar != head_dim so each one matters
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        rope_theta=100.0)),
    # local and global RoPE bases, linear scaling on the global layers, q/k norms
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=20, layer_types=[SLIDING, FULL, SLIDING],
        rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 10.0},
                         FULL: {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0}})),
}


@dataclass
class Checkpoint:
    path: Path
    hf: "torch.nn.Module"


def redraw(model: torch.nn.Module, seed: int) -> None:
    """N(0, 1/fan_in) matrices, 0.1 N(0, 1) for norm offsets ((1 + w) norms) and biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise / p.shape[1] ** 0.5 if p.ndim == 2 else 0.1 * noise)


def build(variant: str, seed: int = 0, **overrides):
    cfg_cls, model_cls, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra, **overrides})
    model = getattr(transformers, model_cls)(cfg).eval()
    redraw(model, seed)
    return model


def save(directory: Path, variant: str, seed: int = 0, **overrides) -> Checkpoint:
    hf = build(variant, seed, **overrides)
    hf.save_pretrained(directory)
    return Checkpoint(Path(directory), hf)


def rewrite_config(directory: Path, edit) -> dict:
    """Apply edit(config dict) to config.json in place; returns the new dict."""
    path = Path(directory) / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg, indent=2))
    return cfg
