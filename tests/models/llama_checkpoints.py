"""Tiny random Llama-family checkpoints built with HF transformers and saved with `save_pretrained`.

Every checkpoint is written to disk and loaded back through `kiln.load`, the real
loading path. The HF model object stays in memory as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)

# name -> (config class, model class, config overrides)
FAMILIES = {
    # SmolLM2 / Llama 3 shape: GQA, tied embeddings, llama3 rope scaling (short original context so
    # every frequency band is exercised), vocab 160
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=160, tie_word_embeddings=True, rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    # sliding window of 5, far shorter than the sequences tested
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(vocab_size=128, sliding_window=5)),
    # Q/K/V biases, untied head
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(vocab_size=144, tie_word_embeddings=False)),
    # q/k norms, head_dim (16) != hidden / heads (8), MHA
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(vocab_size=128, head_dim=16, num_key_value_heads=4,
                                                       tie_word_embeddings=True)),
}


@dataclass
class Checkpoint:
    path: Path
    hf: "torch.nn.Module"
    vocab_size: int


def build_hf_model(family: str, seed: int = 0, **overrides):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra, **overrides})
    return getattr(transformers, model_cls)(cfg).eval()


def save_checkpoint(directory: Path, family: str, seed: int = 0, save_kwargs=None, **overrides) -> Checkpoint:
    hf = build_hf_model(family, seed, **overrides)
    hf.save_pretrained(directory, **(save_kwargs or {}))
    return Checkpoint(Path(directory), hf, hf.config.vocab_size)


# ---- a small byte-level BPE tokenizer, trained here, saved the way HF saves one --------------

CORPUS = [
    "Once upon a time there was a little kiln that baked graphs.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thanks.",
    "Numbers 0123456789 and symbols (a + b) * c = d.",
] * 8

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(vocab_size: int):
    """A HF PreTrainedTokenizerFast of at most `vocab_size` ids with bos/eos/pad and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    assert tk.get_vocab_size() <= vocab_size
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast
