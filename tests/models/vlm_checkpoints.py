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


def vlm_model(family: str = "smolvlm", seed: int = 0, tie: bool = False, image_token_id: int = IMAGE_TOKEN,
              **decoder):
    """A tiny Idefics3 or SmolVLM ForConditionalGeneration with re-drawn weights."""
    import transformers

    cfg_cls = {"smolvlm": transformers.SmolVLMConfig, "idefics3": transformers.Idefics3Config}[family]
    model_cls = {"smolvlm": transformers.SmolVLMForConditionalGeneration,
                 "idefics3": transformers.Idefics3ForConditionalGeneration}[family]
    cfg = cfg_cls(vision_config=dict(VISION), text_config={**DECODER, "tie_word_embeddings": tie, **decoder},
                  scale_factor=2, image_token_id=image_token_id, tie_word_embeddings=tie, pad_token_id=None)
    torch.manual_seed(seed)
    return redraw(model_cls(cfg), seed)


# ---- a processor: byte-level BPE tokenizer with the image tokens, and HF's Pil image processor ------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
            "<global-img>", "<video>", *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]
CHAT_TEMPLATE = (  # SmolVLM's template
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
CORPUS = ["Describe the image in detail.", "What is in this picture? A cat on a mat.",
          "User: Assistant: frames from a video of a red ball", "0123456789 :,.!?"] * 8


def vlm_tokenizer():
    """A HF fast tokenizer: the specials first (ids 0..42), then bytes and merges (vocab <= 320)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<end_of_utterance>",
                                                pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def hf_processor(tile: int = 32, longest: int = 64, image_seq_len: int = TOKENS_PER_TILE, **image_kwargs):
    """HF's Idefics3Processor over Idefics3ImageProcessorPil (Pillow, no torchvision)."""
    import transformers

    images = transformers.Idefics3ImageProcessorPil(size={"longest_edge": longest},
                                                    max_image_size={"longest_edge": tile}, **image_kwargs)
    return transformers.Idefics3Processor(images, vlm_tokenizer(), image_seq_len=image_seq_len,
                                          chat_template=CHAT_TEMPLATE)


def save_vlm_checkpoint(directory, family: str = "smolvlm", seed: int = 6):
    """A complete checkpoint: model (vocab 320, <image> = the tokenizer's id), tokenizer, processor, template."""
    processor = hf_processor()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    hf = vlm_model(family, seed=seed, tie=True, image_token_id=image_id, vocab_size=320)
    hf.save_pretrained(directory)
    processor.save_pretrained(directory)
    return hf, processor


def hf_image_features(hf, pixel_values):
    """HF's connector output [tiles * tokens, hidden], whichever transformers 5.x shape it returns."""
    with torch.no_grad():
        out = hf.get_image_features(pixel_values=torch.as_tensor(pixel_values))
    out = getattr(out, "pooler_output", out)
    if isinstance(out, (list, tuple)):
        out = torch.cat([o.reshape(-1, o.shape[-1]) for o in out])
    return out.reshape(-1, out.shape[-1]).numpy()
