"""Tiny random Gemma 4 checkpoints (text stack and unified) built with HF transformers and saved with
`save_pretrained`, weights re-drawn so that every feature changes the output measurably."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

# sliding / full layers alternating, the last two sharing KV (one of each type), a window of 4 (far
# shorter than the prompts), full layers with their own head dim, one kv head and v = k, PLE, a
# double-wide MLP on the sharing layers, final-logit softcapping, small RoPE bases so rotation matters
TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
            attention_k_eq_v=True, sliding_window=4, hidden_size_per_layer_input=8, vocab_size_per_layer_input=128,
            num_kv_shared_layers=2, use_double_wide_mlp=True, final_logit_softcapping=5.0,
            layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=256,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                             "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5,
                                                "rope_theta": 200.0}},
            pad_token_id=0, bos_token_id=2, eos_token_id=None)

# no PLE, no KV sharing, separate v, untied head: the plain path
PLAIN = dict(TEXT, hidden_size_per_layer_input=0, num_kv_shared_layers=0, attention_k_eq_v=False,
             use_double_wide_mlp=False, final_logit_softcapping=None, tie_word_embeddings=False, num_hidden_layers=4,
             layer_types=["sliding_attention", "sliding_attention", "full_attention", "full_attention"])


def redraw(model: torch.nn.Module, seed: int) -> None:
    """N(0, 1/fan_in) matrices, 1 + 0.1 N(0, 1) norm weights and layer scalars, 0.1 N(0, 1) biases
    and position tables: HF's std-0.02 init makes attention near uniform and hides bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or "inv_freq" in name or "embed_scale" in name:
                continue
            r = torch.randn(t.shape, generator=gen)
            if name.endswith("layer_scalar") or ("norm" in name or "_ln" in name) and name.endswith("weight"):
                t.copy_(1 + 0.1 * r)
            elif t.ndim == 2:
                t.copy_(r / math.sqrt(t.shape[1]))
            elif t.ndim == 3 and "pos_embedding" not in name:
                t.copy_(r / math.sqrt(t.shape[-1]))
            else:
                t.copy_(0.1 * r)


def save_text(directory: Path, seed: int = 0, **overrides):
    cfg = transformers.Gemma4TextConfig(**{**TEXT, **overrides})
    torch.manual_seed(seed)
    hf = transformers.Gemma4ForCausalLM(cfg).eval()
    redraw(hf, seed)
    hf.save_pretrained(directory)
    return hf


UNIFIED_TEXT = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, global_head_dim=32, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention", "full_attention"],
                    max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=None,
                    rope_parameters=TEXT["rope_parameters"])
TOKENS = dict(image_token_id=290, audio_token_id=291, boi_token_id=292, eoi_token_id=293, boa_token_id=294,
              eoa_token_index=295, video_token_id=296)


def save_unified(directory: Path, seed: int = 0, **text_overrides):
    cfg = transformers.Gemma4UnifiedConfig(
        text_config={**UNIFIED_TEXT, **text_overrides},
        vision_config=dict(patch_size=2, pooling_kernel_size=2, mm_embed_dim=24, mm_posemb_size=16,
                           output_proj_dims=24),
        audio_config=dict(audio_embed_dim=20), **TOKENS)
    torch.manual_seed(seed)
    hf = transformers.Gemma4UnifiedForConditionalGeneration(cfg).eval()
    redraw(hf, seed)
    hf.save_pretrained(directory)
    return hf
