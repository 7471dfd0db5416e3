"""A tiny random HF Sam2Model for the SAM 2 tests: windowed (with padding) and global attention, query
pooling at every stage change, all weights re-drawn so attention, norms and position terms matter."""

from __future__ import annotations

import numpy as np

IMAGE = 128


def tiny_config(**decoder):
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig,
                              Sam2VisionConfig)

    backbone = Sam2HieraDetConfig(
        hidden_size=16, image_size=[IMAGE, IMAGE], blocks_per_stage=[1, 2, 3, 2], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 2, 2, 4], window_size_per_stage=[8, 4, 6, 2], global_attention_blocks=[4],
        window_positional_embedding_background_size=[7, 7], num_query_pool_stages=3)
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=32)
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=IMAGE, patch_size=16, mask_input_channels=8)
    dec = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, **decoder)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=dec)


def redraw(model, seed: int = 0) -> None:
    """N(0, 1/fan_in) matrices, 1 + 0.1 N norm weights, 0.1 N biases and position embeddings."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.dtype.is_floating_point:
                continue
            n = torch.randn(p.shape, generator=gen)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.copy_(0.1 * n)
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * n)
            elif leaf in ("pos_embed", "pos_embed_window", "no_memory_embedding"):
                p.copy_(0.1 * n)
            elif leaf == "positional_embedding":
                p.copy_(n)
            else:
                p.copy_(n / np.sqrt(max(1, int(np.prod(p.shape[1:])))))


def make_checkpoint(path, seed: int = 0, **decoder):
    """Save a re-drawn tiny Sam2Model to `path`; returns the HF model (eval mode)."""
    import torch
    from transformers import Sam2Model

    torch.manual_seed(seed)
    model = Sam2Model(tiny_config(**decoder)).eval()
    redraw(model, seed)
    model.save_pretrained(path)
    return model


def pixels(batch: int = 1, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)
