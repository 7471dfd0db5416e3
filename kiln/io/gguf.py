"""GGUF checkpoints (llama.cpp, Ollama): metadata, tensors and tokenizer in one file.

Read with the `gguf` package (the format's own reader and NumPy dequantizers, the
same code HF transformers uses), then presented in HF terms so the family code
needs no GGUF knowledge:

- the hyper-parameters (``llama.block_count``, ``llama.attention.head_count``, ...)
  become a HF-style config dict with ``model_type``;
- the tensors (``blk.N.attn_q.weight``, ``token_embd.weight``, ...) become HF keys
  (``model.layers.N.self_attn.q_proj.weight``, ...), dequantized to float32;
  llama.cpp's converter permutes the Q/K rows of llama-arch models into the
  interleaved-pair RoPE layout, and they are permuted back here;
- the tokenizer (``tokenizer.ggml.*``) becomes a kiln :class:`Tokenizer`
  (:meth:`Tokenizer.from_gguf_metadata`).

Supported architectures: ``llama`` (Llama 2/3, SmolLM2, Mistral), ``qwen2``, ``qwen3``, ``gemma3``
(text). llama.cpp stores Gemma's (1 + w) norm weights with the 1 added; it is subtracted here.
Every block type that ``gguf.quants`` dequantizes is supported; the others
(Q8_1, Q8_K, ...) raise :class:`GGUFError` naming the tensor and its type.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.io.gguf_file import MAGIC, GGUFError, parse_gguf

__all__ = ["GGUFError", "GGUFCheckpoint", "read_gguf", "find_gguf", "ARCHITECTURES"]

# GGUF general.architecture -> the HF model_type kiln builds
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                     "gemma3": "Gemma3ForCausalLM"}
# architectures whose Q/K rows llama.cpp's converter permuted (LlamaModel.permute)
_PERMUTED_QK = {"llama"}
# architectures whose norm weights llama.cpp's converter stored as 1 + w (Gemma's RMSNorm scales by 1 + w)
_UNIT_OFFSET_NORMS = {"gemma3"}

# GGUF tensor name (after `blk.N.`) -> HF key (after `model.layers.N.`)
_BLOCK_KEYS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# Gemma 2/3 blocks: a norm on both sides of each sublayer
_SANDWICH_KEYS = {**_BLOCK_KEYS, "post_attention_norm": "post_attention_layernorm",
                  "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_ARCH_BLOCK_KEYS = {"gemma3": _SANDWICH_KEYS}
_TOP_KEYS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")


@dataclass
class GGUFCheckpoint:
    """A GGUF file in HF terms: config dict, tensors under HF keys, tokenizer metadata."""

    path: Path
    architecture: str
    config: dict[str, Any]                 # HF config.json fields, with model_type
    tensors: dict[str, np.ndarray]         # HF keys -> float32 (or the stored int/float) arrays
    tensor_types: dict[str, str]           # HF key -> GGML type name as stored (Q4_1, F32, ...)
    tokenizer_metadata: dict[str, Any] = field(default_factory=dict)  # tokenizer.* fields

    def tokenizer(self):
        """A kiln Tokenizer from the file's tokenizer.ggml.* metadata and chat template (None if absent)."""
        if "tokenizer.ggml.tokens" not in self.tokenizer_metadata:
            return None
        from kiln.io.tokenizer import Tokenizer

        return Tokenizer.from_gguf_metadata(self.tokenizer_metadata, source=str(self.path))

    def generation_defaults(self) -> dict[str, Any]:
        """bos/eos/pad ids as a generation config reads them from config.json."""
        return {k: self.config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in self.config}


def find_gguf(path: str | os.PathLike) -> Path | None:
    """`path` itself if it is a .gguf file, the one .gguf file in a directory, else None.

    A directory with several .gguf files is ambiguous: GGUFError lists them.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p if _is_gguf_file(p) else None
    if not p.is_dir():
        return None
    found = sorted(f for f in p.glob("*.gguf") if f.is_file())
    if len(found) > 1:
        raise GGUFError(f"{p}: holds several GGUF files {[f.name for f in found]}; pass the path of one")
    return found[0] if found else None


def _is_gguf_file(p: Path) -> bool:
    if p.suffix == ".gguf":
        return True
    try:
        with open(p, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def _reader(path: Path):
    try:
        import gguf  # noqa: F401  (block types and dequantizers)
    except ImportError:
        raise GGUFError(f"{path}: reading GGUF files needs the 'gguf' package: pip install gguf "
                        f"(from the checkout: pip install -e '.[gguf]')") from None
    return parse_gguf(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (strings decoded, arrays as lists)."""
    return {k: v for k, v in _reader(Path(path)).metadata.items() if not k.startswith("GGUF.")}


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Read a GGUF file: HF-style config, dequantized tensors under HF names, tokenizer metadata."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits, dequantize

    p = Path(path)
    file = _reader(p)
    meta = {k: v for k, v in file.metadata.items() if not k.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{p}: architecture {arch!r} is not supported; supported GGUF architectures: "
                        f"{sorted(ARCHITECTURES)}")
    raw: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    plain = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.F64}
    for t in file.tensors:
        qtype = GGMLQuantizationType(t.ggml_type)
        data = file.tensor_data(t)
        if qtype in plain:
            arr = np.asarray(data).astype(np.float32)
        elif qtype in _type_traits:
            arr = dequantize(data, qtype)
        else:
            dequantizable = sorted(q.name for q in _type_traits)
            raise GGUFError(f"{p}: tensor '{t.name}' is stored as {qtype.name}, a block type kiln cannot "
                            f"dequantize; supported: F32, F16, F64, {', '.join(dequantizable)}")
        # GGUF lists dims fastest-first; NumPy order is the reverse
        shape = tuple(int(d) for d in reversed(t.dims))
        if arr.size != int(np.prod(shape)):
            raise GGUFError(f"{p}: tensor '{t.name}' holds {arr.size} values, its shape {shape} needs "
                            f"{int(np.prod(shape))}")
        raw[t.name] = arr.reshape(shape)
        types[t.name] = qtype.name
    config = _hf_config(p, arch, meta, raw)
    tensors, hf_types = _hf_tensors(p, arch, config, raw, types)
    tok_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return GGUFCheckpoint(p, arch, config, tensors, hf_types, tok_meta)


def _hf_config(path: Path, arch: str, meta: dict, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """A HF config.json equivalent of the GGUF hyper-parameters."""
    def need(key):
        full = f"{arch}.{key}"
        if full not in meta:
            raise GGUFError(f"{path}: metadata lacks {full!r}, needed to build a {arch} model")
        return meta[full]

    def opt(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = opt("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise GGUFError(f"{path}: per-layer {arch}.attention.head_count_kv is not supported")
    head_dim = int(opt("attention.key_length", hidden // heads))
    vocab = opt("vocab_size") or len(meta.get("tokenizer.ggml.tokens") or []) or (
        tensors["token_embd.weight"].shape[0] if "token_embd.weight" in tensors else None)
    if not vocab:
        raise GGUFError(f"{path}: cannot tell the vocabulary size (no {arch}.vocab_size, tokens or token_embd)")
    cfg: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "architectures": [_HF_ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(opt("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(opt("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(opt("context_length", 2048)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
    }
    if arch == "gemma3":  # HF's GGUF reader leaves the rest (local RoPE base, query scalar, pattern) at defaults
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        if opt("attention.sliding_window") is not None:
            cfg["sliding_window"] = int(opt("attention.sliding_window"))
    else:
        cfg["hidden_act"] = "silu"
    rot = opt("rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        cfg["partial_rotary_factor"] = int(rot) / head_dim
    scaling = opt("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFError(f"{path}: rope scaling {scaling!r} is not supported; kiln reads 'linear' scaling "
                            f"and Llama 3's rope_freqs table")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(opt("rope.scaling.factor", 1.0))}
    if "rope_freqs.weight" in tensors:
        cfg["rope_scaling"] = _llama3_rope(path, cfg, tensors["rope_freqs.weight"], head_dim)
    for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            cfg[name] = int(meta[f"tokenizer.ggml.{key}"])
    return cfg


def _llama3_rope(path: Path, cfg: dict, freqs: np.ndarray, head_dim: int) -> dict:
    """Llama 3.1's rope scaling, which llama.cpp stores as a table of per-frequency divisors.

    The table is recomputed from the standard parameters (low/high frequency factors 1 and 4,
    original context 8192, factor = its largest entry) and must agree, else GGUFError.
    """
    factor = float(freqs.max())
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * np.pi / inv
    low, high = 8192 / params["low_freq_factor"], 8192 / params["high_freq_factor"]
    smooth = (8192 / wavelen - params["low_freq_factor"]) / (params["high_freq_factor"] - params["low_freq_factor"])
    expect = np.where(wavelen < high, 1.0, np.where(wavelen > low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    if freqs.shape != expect.shape or not np.allclose(freqs, expect, rtol=1e-4):
        raise GGUFError(f"{path}: tensor 'rope_freqs.weight' does not match Llama 3 rope scaling with factor "
                        f"{factor}, low/high frequency factors 1/4 and original context 8192")
    return params


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute` (HF rotate-half rows -> interleaved pairs) on Q or K rows."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(path: Path, arch: str, cfg: dict, raw: dict[str, np.ndarray], types: dict[str, str]):
    out: dict[str, np.ndarray] = {}
    out_types: dict[str, str] = {}
    block_keys = _ARCH_BLOCK_KEYS.get(arch, _BLOCK_KEYS)
    for name, arr in raw.items():
        if name == "rope_freqs.weight":
            continue  # folded into the config's rope_scaling
        if arch in _UNIT_OFFSET_NORMS and name.endswith("norm.weight"):
            arr = arr - np.float32(1)
        m = _BLOCK_RE.match(name)
        if m and m.group(2) in block_keys:
            layer, part, kind = m.groups()
            hf = f"model.layers.{layer}.{block_keys[part]}.{kind}"
            if arch in _PERMUTED_QK and part in ("attn_q", "attn_k"):
                arr = _unpermute(arr, cfg["num_attention_heads"] if part == "attn_q" else cfg["num_key_value_heads"])
        else:
            stem, _, kind = name.rpartition(".")
            hf = f"{_TOP_KEYS[stem]}.{kind}" if stem in _TOP_KEYS else name  # unknown: kept, reported unused
        out[hf] = arr
        out_types[hf] = types[name]
    return out, out_types


# ---- tokenizer ------------------------------------------------------------------------------
# llama.cpp's pre-tokenizer splits by tokenizer.ggml.pre (llama-vocab.cpp), as HF pre-tokenizer pieces
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BPE_PRE = {  # pre type -> (split regex or None for GPT-2's, digits split one by one, ignore_merges)
    "default": (None, False, False), "gpt2": (None, False, False), "gpt-2": (None, False, False),
    "smollm": (None, True, False),
    "llama-bpe": (_LLAMA3_SPLIT, False, True), "llama3": (_LLAMA3_SPLIT, False, True),
    "llama-v3": (_LLAMA3_SPLIT, False, True), "smaug-bpe": (_LLAMA3_SPLIT, False, True),
    "qwen2": (_QWEN2_SPLIT, False, False), "deepseek-r1-qwen": (_QWEN2_SPLIT, False, False),
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def tokenizer_backend(meta, source: str):
    """(tokenizers.Tokenizer, named special tokens) from GGUF tokenizer.* metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    from kiln.io.errors import TokenizerError

    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise TokenizerError(f"{source}: no tokenizer.ggml.tokens in the GGUF metadata")
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if kind == "gpt2":
        pre = meta.get("tokenizer.ggml.pre") or "default"
        if pre not in _BPE_PRE:
            raise TokenizerError(f"{source}: GGUF pre-tokenizer {pre!r} is not supported; supported: {sorted(_BPE_PRE)}")
        split, digits, ignore_merges = _BPE_PRE[pre]
        alphabet = _byte_alphabet()
        spelled = [t if set(t) <= set(alphabet.values()) else "".join(alphabet[b] for b in t.encode("utf-8"))
                   for t in tokens]
        vocab = {t: i for i, t in enumerate(spelled)}
        merges = _merges(meta, source)
        tk = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges))
        pieces = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
        if split is None:
            pieces.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            pieces += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        tk.pre_tokenizer = pieces[0] if len(pieces) == 1 else pre_tokenizers.Sequence(pieces)
        tk.decoder = decoders.ByteLevel()
        # as HF: a control token spelled outside the byte alphabet is a llama.cpp mislabel, not added
        in_alphabet = set(alphabet.values())
        control = [t for t, ty in zip(spelled, types) if ty == _CONTROL and set(t) <= in_alphabet]
        default_bos = False
    elif kind == "llama":
        vocab = {t: i for i, t in enumerate(tokens)}
        if "tokenizer.ggml.merges" in meta:
            merges = _merges(meta, source)
        else:
            scores = meta.get("tokenizer.ggml.scores")
            if scores is None or len(scores) != len(tokens):
                raise TokenizerError(f"{source}: a 'llama' (SentencePiece) GGUF vocabulary needs "
                                     f"tokenizer.ggml.merges or one tokenizer.ggml.scores entry per token")
            merges = _merges_from_scores(vocab, dict(zip(tokens, scores)))
        unk_id = meta.get("tokenizer.ggml.unknown_token_id")
        unk = tokens[int(unk_id)] if unk_id is not None else None
        tk = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else "never",
                                                    split=False)
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        tk.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        control = [t for t, ty in zip(tokens, types) if ty == _CONTROL]
        spelled, default_bos = tokens, True
    else:
        raise TokenizerError(f"{source}: GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' "
                             f"(byte-level BPE) and 'llama' (SentencePiece-style BPE)")
    if control:
        tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user = [t for t, ty in zip(spelled, types) if ty == _USER_DEFINED]
    if user:
        tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    specials = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        tid = meta.get(f"tokenizer.ggml.{key}")
        if tid is not None:
            if not 0 <= int(tid) < len(spelled):
                raise TokenizerError(f"{source}: tokenizer.ggml.{key} is {tid}, outside the {len(spelled)} tokens")
            specials[name] = spelled[int(tid)]
    add_bos = meta.get("tokenizer.ggml.add_bos_token", default_bos)
    bos = specials.get("bos_token")
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    elif kind == "gpt2":
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return tk, specials


def _merges(meta, source: str) -> list[tuple[str, str]]:
    from kiln.io.errors import TokenizerError

    out = []
    for i, m in enumerate(meta.get("tokenizer.ggml.merges") or []):
        parts = m.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{source}: tokenizer.ggml.merges[{i}] is {m!r}, expected two tokens separated "
                                 f"by one space")
        out.append((parts[0], parts[1]))
    if not out:
        raise TokenizerError(f"{source}: a 'gpt2' GGUF vocabulary needs tokenizer.ggml.merges")
    return out


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece merges implied by a vocabulary: every split of a token into two tokens, best score first
    (the order HF's `generate_merges` gives, so ties break the same way)."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's bytes -> printable unicode characters table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
