"""Tiny random SigLIP / Idefics3 / SmolVLM checkpoints for the tests (HF transformers, save_pretrained).

Every weight is re-drawn after construction: HF's init (std 0.02, zero biases, xavier) leaves
attention near uniform and hides bugs in masks, positions and norms.
"""

from __future__ import annotations

import numpy as np
import torch

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, num_channels=3)
TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, projection_size=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# a Llama-3-shaped decoder (GQA, rope theta 1e5) whose vocabulary holds the special image tokens
DECODER = dict(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=100000.0,
               bos_token_id=None, eos_token_id=None, pad_token_id=None)
IMAGE_TOKEN, FAKE_TOKEN, GLOBAL_TOKEN = 100, 101, 102
TOKENS_PER_TILE = 4   # (32 / 8)^2 patches, pixel shuffle by 2


def redraw(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """N(0, 1/fan_in) matrices, 1 + 0.1 N(0, 1) norm weights, 0.1 N(0, 1) biases and tables."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "probe" not in name and "position" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * int(np.prod(p.shape[1:])) ** -0.5)
            elif "norm" in name and p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2 and "position" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def vlm_model(family: str = "smolvlm", seed: int = 0, tie: bool = False):
    """A tiny Idefics3 or SmolVLM ForConditionalGeneration with re-drawn weights."""
    import transformers

    cfg_cls = {"smolvlm": transformers.SmolVLMConfig, "idefics3": transformers.Idefics3Config}[family]
    model_cls = {"smolvlm": transformers.SmolVLMForConditionalGeneration,
                 "idefics3": transformers.Idefics3ForConditionalGeneration}[family]
    cfg = cfg_cls(vision_config=dict(VISION), text_config={**DECODER, "tie_word_embeddings": tie},
                  scale_factor=2, image_token_id=IMAGE_TOKEN, tie_word_embeddings=tie, pad_token_id=None)
    torch.manual_seed(seed)
    return redraw(model_cls(cfg), seed)
