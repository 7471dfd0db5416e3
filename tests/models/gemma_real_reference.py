"""Writes gemma_real_reference.npz: HF transformers' outputs for gemma-3-270m loaded from the packaged GGUF.

HF needs minutes to read this GGUF (its reader builds a NumPy view per vocabulary entry) and
to build its tokenizer, far over a unit test's budget, so test_gemma_real.py checks kiln against
these stored outputs. Regenerate (and compare kiln against live HF) with:

    python tests/models/gemma_real_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).with_name("gemma_real_reference.npz")
PROMPT = "The capital of France is"
NEW_TOKENS = 16
TOP_K = 64          # per position: the HF top-k ids and their logits
SAMPLE = 2048       # per position: logits at these fixed vocabulary ids
# words whose SentencePiece pieces ("\u2581" + word) are whole entries of Gemma's vocabulary
WHOLE_WORDS = ("world", "capital", "France", "language", "computer", "beautiful", "information", "because",
               "important", "government")


def sample_ids(vocab: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(vocab, SAMPLE, replace=False))


def main() -> int:
    import torch
    import transformers

    import kiln
    from kiln.models.registry import packaged_model_path

    d = packaged_model_path("gemma-3-270m")
    gguf = next(d.glob("*.gguf"))
    model = kiln.load(d)
    tok = model.tokenizer
    prompt_ids = np.asarray([tok.encode(PROMPT)], np.int64)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(prompt_ids), max_new_tokens=NEW_TOKENS, do_sample=False).numpy()
        logits = hf(torch.from_numpy(out)).logits[0].numpy()
    top = np.argsort(-logits, axis=-1)[:, :TOP_K]
    ids = sample_ids(logits.shape[-1])
    hf_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=gguf.name)
    hf_words = [hf_tok(" " + w, add_special_tokens=False)["input_ids"] for w in WHOLE_WORDS]
    np.savez_compressed(
        REFERENCE, prompt_ids=prompt_ids, generated=out, top_ids=top,
        top_logits=np.take_along_axis(logits, top, axis=-1), sample_logits=logits[:, ids],
        hf_word_pieces=np.array([len(p) for p in hf_words]))
    kiln_logits = model(out)[0]
    print(f"wrote {REFERENCE}; HF greedy: {tok.decode(out[0])!r}")
    print(f"kiln vs HF: max |logit diff| {np.abs(kiln_logits - logits).max():.2e} "
          f"(max |logit| {np.abs(logits).max():.1f})")
    print(f"HF tokenizer pieces for whole-vocabulary words: {dict(zip(WHOLE_WORDS, [len(p) for p in hf_words]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
