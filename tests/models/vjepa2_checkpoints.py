"""Tiny random V-JEPA 2 checkpoints (HF VJEPA2Model / VJEPA2ForVideoClassification) for the vjepa2 tests.

HF's init (std 0.02, zero mask tokens) makes attention near uniform, so every weight is re-drawn:
matrices N(0, 1/fan_in), norm weights 1 + 0.1 N, biases, mask and query tokens 0.1 N / N.
`to_original_layout` rewrites a HF state dict into the original (Meta) names with fused qkv / kv,
following HF's conversion scripts (convert_vjepa2_to_hf.py, convert_vjepa2_classifier_to_hf.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

TINY = dict(patch_size=4, crop_size=16, frames_per_clip=4, tubelet_size=2, hidden_size=48, num_attention_heads=2,
            num_hidden_layers=2, mlp_ratio=2.0, pred_hidden_size=32, pred_num_attention_heads=2,
            pred_num_hidden_layers=2, pred_num_mask_tokens=3, pred_mlp_ratio=2.0, num_pooler_layers=2)


def redraw(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("mask_tokens") or name.endswith("query_tokens"):
                p.copy_(noise)
            elif p.ndim >= 2:
                p.copy_(noise / np.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def make_model(classifier: bool = False, seed: int = 0, **overrides):
    import transformers

    cfg = transformers.VJEPA2Config(**{**TINY, **overrides})
    cls = transformers.VJEPA2ForVideoClassification if classifier else transformers.VJEPA2Model
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    redraw(model, seed)
    return model


def save(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


_ENCODER_RULES = [  # HF name (after the vjepa2. prefix) -> original name
    (r"encoder\.embeddings\.patch_embeddings\.", "patch_embed."),
    (r"encoder\.layer\.(\d+)\.attention\.", r"blocks.\1.attn."),
    (r"encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"encoder\.layernorm\.", "norm."),
    (r"predictor\.embeddings\.predictor_embeddings\.", "predictor_embed."),
    (r"predictor\.layer\.(\d+)\.attention\.", r"predictor_blocks.\1.attn."),
    (r"predictor\.layer\.(\d+)\.", r"predictor_blocks.\1."),
    (r"predictor\.layernorm\.", "predictor_norm."),
    (r"predictor\.proj\.", "predictor_proj."),
    (r"pooler\.cross_attention_layer\.layer_norm(\d)\.", r"pooler.cross_attention_block.norm\1."),
    (r"pooler\.cross_attention_layer\.cross_attn\.(q|k|v)_proj\.", r"pooler.cross_attention_block.xattn.\1."),
    (r"pooler\.cross_attention_layer\.mlp\.", "pooler.cross_attention_block.mlp."),
    (r"pooler\.self_attention_layers\.(\d+)\.layer_norm(\d)\.", r"pooler.blocks.\1.norm\2."),
    (r"pooler\.self_attention_layers\.(\d+)\.self_attn\.out_proj\.", r"pooler.blocks.\1.attn.proj."),
    (r"pooler\.self_attention_layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"pooler.blocks.\1.attn.\2."),
    (r"pooler\.self_attention_layers\.(\d+)\.mlp\.", r"pooler.blocks.\1.mlp."),
    (r"classifier\.", "linear."),
]


def to_original_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF V-JEPA 2 tensors -> original names; query/key/value (q/k/v) fused into qkv (k/v into kv for the
    pooler's cross-attention); the predictor's [M, 1, 1, D] mask tokens split into mask_tokens.{j} [1, 1, D]."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("vjepa2.")
        if key == "predictor.embeddings.mask_tokens":
            for j in range(value.shape[0]):
                renamed[f"mask_tokens.{j}"] = value[j]
            continue
        for pattern, repl in _ENCODER_RULES:
            new = re.sub("^" + pattern, repl, key)
            if new != key:
                key = new
                break
        renamed[key] = value
    fused = {}
    for key, value in renamed.items():
        m = re.fullmatch(r"(.*\.attn)\.(query|key|value|q|k|v)\.(weight|bias)", key)
        m = m or re.fullmatch(r"(.*\.xattn)\.(q|k|v)\.(weight|bias)", key)
        if m is None:
            fused[key] = value
            continue
        base, part, kind = m.groups()
        if base.endswith("xattn"):
            if part == "q":
                fused[key] = value
            elif part == "k":
                fused[f"{base}.kv.{kind}"] = np.concatenate([value, renamed[f"{base}.v.{kind}"]])
        elif part in ("query", "q"):
            names = ("query", "key", "value") if part == "query" else ("q", "k", "v")
            fused[f"{base}.qkv.{kind}"] = np.concatenate([renamed[f"{base}.{p}.{kind}"] for p in names])
    return fused


def save_original(hf_dir: Path, directory: Path, edit=None) -> Path:
    """The HF checkpoint at hf_dir rewritten into the original layout (config.json copied); `edit(tensors)`
    may change the tensors before they are written."""
    from safetensors.numpy import load_file

    tensors = to_original_layout(load_file(str(hf_dir / "model.safetensors")))
    if edit is not None:
        edit(tensors)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / "model.safetensors"))
    shutil.copyfile(hf_dir / "config.json", directory / "config.json")
    return directory


def edit_hf(hf_dir: Path, directory: Path, edit) -> Path:
    """A copy of the HF checkpoint with `edit(tensors)` applied."""
    from safetensors.numpy import load_file

    tensors = load_file(str(hf_dir / "model.safetensors"))
    edit(tensors)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    shutil.copyfile(hf_dir / "config.json", directory / "config.json")
    return directory


def clip(batch: int, frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, frames, 3, height, width).astype(np.float32)
