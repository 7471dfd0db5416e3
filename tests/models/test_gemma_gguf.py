"""Gemma 3 GGUF files (llama.cpp's layout) against HF transformers loading the same file.

A tiny random Gemma 3 written as llama.cpp's converter writes it: `gemma3` architecture keys,
the sandwich norms' GGUF names (`post_attention_norm`, `ffn_norm` = pre-feed-forward,
`post_ffw_norm`) and every norm weight stored as 1 + w. The real gemma-3-270m file is in
test_gemma_real.py.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF files: pip install gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate installed")

from gemma_checkpoints import FULL, SLIDING, redraw  # noqa: E402

import kiln  # noqa: E402
from kiln.io.gguf import read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
LAYERS = 6   # HF's GGUF reader gives Gemma 3 its default pattern: every 6th layer global
GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
              "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gemma3_gguf(path, quant=Q.Q8_0, extra=None):
    cfg = transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, max_position_embeddings=128, rms_norm_eps=1e-6,
        rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
                         FULL: {"rope_type": "default", "rope_theta": 100.0}})
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    redraw(model, 11)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_key_length(16)
    w.add_value_length(16)
    w.add_rope_freq_base(100.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(4)
    w.add_vocab_size(64)
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        a = t.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            stem, kind = rest.rsplit(".", 1)
            g = f"blk.{layer}.{GGUF_NAMES[stem]}.{kind}"
        if g.endswith("norm.weight"):
            a = a + 1  # llama.cpp's converter folds Gemma's unit offset into the weight
        if a.ndim == 2 and quant != Q.F32:
            w.add_tensor(g, gguf.quants.quantize(a, quant), raw_dtype=quant)
        else:
            w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("quant", [Q.Q8_0, Q.F32])
def test_gemma3_gguf_logits_match_hf_loading_the_same_file(tmp_path, quant):
    path = write_gemma3_gguf(tmp_path / "gemma3.gguf", quant)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    assert ref.config.layer_types == [SLIDING] * 5 + [FULL]
    model = kiln.load(path)
    assert model.config.layer_types == tuple(ref.config.layer_types)
    assert model.config.sliding_window == 4 and model.config.ropes[FULL].theta == 100.0
    assert model.config.ropes[SLIDING].theta == 10000.0   # HF's default local base: GGUF does not store it
    ids = np.random.default_rng(0).integers(0, 64, (1, 12)).astype(np.int64)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(model(ids), want, atol=1e-4, rtol=0)


def test_gemma3_gguf_norms_lose_the_stored_unit_offset(tmp_path):
    ck = read_gguf(write_gemma3_gguf(tmp_path / "gemma3.gguf", Q.F32))
    assert ck.config["model_type"] == "gemma3_text" and ck.config["tie_word_embeddings"]
    norms = [k for k in ck.tensors if k.endswith("norm.weight")]
    assert {k.split(".")[-2] for k in norms} >= {"input_layernorm", "post_attention_layernorm",
                                                "pre_feedforward_layernorm", "post_feedforward_layernorm",
                                                "q_norm", "k_norm", "norm"}
    assert all(abs(float(ck.tensors[k].mean())) < 0.2 for k in norms)   # 0.1 N(0, 1) offsets, not 1 + w


def test_unsupported_rope_scaling_names_it(tmp_path):
    from kiln.io.gguf import GGUFError

    path = write_gemma3_gguf(tmp_path / "yarn.gguf", Q.F32, extra={"gemma3.rope.scaling.type": "yarn"})
    with pytest.raises(GGUFError, match=r"yarn\.gguf: rope scaling 'yarn' is not supported"):
        kiln.load(path)
