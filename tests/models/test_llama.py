"""Llama-family LMs (Llama 3 / SmolLM2, Mistral, Qwen2, Qwen3) through `kiln.load` vs HF transformers.

Each tiny random checkpoint is built and saved by transformers; kiln loads the files.
Logits must match HF within 1e-4 (prefill and every decode step) and greedy
generation must produce HF's exact tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from llama_checkpoints import FAMILIES, build_hf_model, save_checkpoint
from kiln.io.errors import CheckpointError, ConfigError
from kiln.load import load
from kiln.models.registry import UnsupportedModelError

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def hf_logits(hf, ids, mask=None):
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask))
    return out.logits.numpy()


def hf_generate(hf, ids, mask=None, **kw):
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask),
                          do_sample=False, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences.numpy(), [x.numpy() for x in out.logits]


def assert_generation_matches(model, hf, ids, mask=None, max_new_tokens=32, **kw):
    ref_seq, ref_logits = hf_generate(hf, ids, mask, max_new_tokens=max_new_tokens, **kw)
    out = model.generate(ids, mask, max_new_tokens=max_new_tokens, output_logits=True,
                         return_dict_in_generate=True, **kw)
    assert len(out.logits) == len(ref_logits)
    for step, (a, b) in enumerate(zip(out.logits, ref_logits)):
        err = np.abs(a - b).max()
        assert err < ATOL, f"step {step}: logits differ from HF by {err}"
    np.testing.assert_array_equal(out.sequences, ref_seq)
    return out.sequences


def left_padded_pair(vocab, long=13, short=6, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(2, long))
    mask = np.ones_like(ids)
    mask[1, : long - short] = 0
    ids[1, : long - short] = 0
    return ids, mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_logits_match_hf(checkpoint, family):
    ck = checkpoint(family)
    model = load(ck.path)
    ids, mask = left_padded_pair(ck.vocab_size, long=12)
    out = model(input_ids=ids, attention_mask=mask)
    ref = hf_logits(ck.hf, ids, mask)
    assert out.shape == ref.shape == (2, 12, ck.vocab_size) and out.dtype == np.float32
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=ATOL, rtol=0)
    single = model(input_ids=ids[:1])  # no mask: all positions
    np.testing.assert_allclose(single, hf_logits(ck.hf, ids[:1]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_generation_and_every_decode_step_match_hf(checkpoint, family):
    ck = checkpoint(family)
    model = load(ck.path)
    ids = np.random.default_rng(2).integers(0, ck.vocab_size, size=(1, 9))
    seq = assert_generation_matches(model, ck.hf, ids, max_new_tokens=32)
    assert seq.shape == (1, 9 + 32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batch_of_prompts_with_different_lengths_matches_hf(checkpoint, family):
    ck = checkpoint(family)
    model = load(ck.path)
    ids, mask = left_padded_pair(ck.vocab_size)
    assert_generation_matches(model, ck.hf, ids, mask, max_new_tokens=12)


def test_mistral_window_is_exercised(checkpoint, tmp_path):
    """Sanity check of the test itself: with a window of 5 the logits differ from full attention."""
    ck = checkpoint("mistral")
    assert ck.hf.config.sliding_window == 5
    ids = np.random.default_rng(3).integers(0, ck.vocab_size, size=(1, 12))
    full = save_checkpoint(tmp_path, "mistral", sliding_window=None)
    assert np.abs(load(full.path)(ids)[0, -1] - load(ck.path)(ids)[0, -1]).max() > 1e-3


def test_qwen2_sliding_window_on_some_layers(tmp_path):
    ck = save_checkpoint(tmp_path, "qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert ck.hf.config.layer_types == ["full_attention", "sliding_attention"]
    model = load(ck.path)
    assert model.config.layer_windows == (None, 4)
    ids = np.random.default_rng(4).integers(0, ck.vocab_size, size=(1, 10))
    assert_generation_matches(model, ck.hf, ids, max_new_tokens=8)


def test_eos_stops_rows_and_pads_like_hf(checkpoint):
    ck = checkpoint("qwen2")
    model = load(ck.path)
    ids, mask = left_padded_pair(ck.vocab_size)
    s = ids.shape[1]
    free, _ = hf_generate(ck.hf, ids, mask, max_new_tokens=10)
    row0 = free[0, s:].tolist()
    step = next(k for k in range(2, 8) if row0[k] not in row0[:k])  # row 0 emits this token first at `step`
    eos = row0[step]
    seq = assert_generation_matches(model, ck.hf, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=7)
    assert seq[0, s + step] == eos and (seq[0, s + step + 1:] == 7).all()
    # without a mask, HF infers it from the pad token
    ids[1, :mask.shape[1] - mask[1].sum()] = 7
    assert_generation_matches(model, ck.hf, ids, None, max_new_tokens=4, pad_token_id=7)
    assert (ids == 7).sum() > 2


def test_sharded_checkpoint(tmp_path):
    ck = save_checkpoint(tmp_path, "qwen3", save_kwargs={"max_shard_size": "20KB"})
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = np.random.default_rng(5).integers(0, ck.vocab_size, size=(1, 7))
    np.testing.assert_allclose(load(tmp_path)(ids), hf_logits(ck.hf, ids), atol=ATOL, rtol=0)


def test_bfloat16_checkpoint_and_dtypes(tmp_path):
    ck = save_checkpoint(tmp_path, "qwen2")
    ck.hf.to(torch.bfloat16).save_pretrained(tmp_path)  # weights stored as BF16
    ids = np.random.default_rng(11).integers(0, ck.vocab_size, size=(1, 10))
    for dtype, torch_dtype, atol in (("float32", torch.float32, ATOL), ("bfloat16", torch.bfloat16, 0.05)):
        ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch_dtype).eval()
        with torch.no_grad():
            ref = ref_model(torch.from_numpy(ids)).logits.float().numpy()
        model = load(tmp_path, dtype=dtype)
        assert model.params["model.norm.weight"].dtype.name == dtype
        np.testing.assert_allclose(model(ids), ref, atol=atol, rtol=0)


def test_load_by_model_id_from_the_hf_cache(checkpoint, tmp_path, monkeypatch):
    ck = checkpoint("qwen3")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen3"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ck.path.iterdir():
        (snap / f.name).symlink_to(f)  # the hub cache links snapshot files to blobs
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    ids = np.random.default_rng(12).integers(0, ck.vocab_size, size=(1, 5))
    np.testing.assert_allclose(load("tiny-org/tiny-qwen3")(ids), hf_logits(ck.hf, ids), atol=ATOL, rtol=0)


def test_load_without_optimizer_matches(checkpoint):
    ck = checkpoint("llama3")
    ids = np.random.default_rng(6).integers(0, ck.vocab_size, size=(1, 7))
    np.testing.assert_allclose(load(ck.path, optimize=False)(ids), hf_logits(ck.hf, ids), atol=ATOL, rtol=0)


def test_original_meta_layout(tmp_path, checkpoint):
    """params.json + consolidated.safetensors with Meta key names and interleaved-RoPE q/k rows."""
    ck = checkpoint("llama3")
    cfg = ck.hf.config
    sd = {k: v.numpy() for k, v in ck.hf.state_dict().items()}
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads

    def to_interleaved(w, heads):  # inverse of HF's convert_llama_weights_to_hf `permute`
        return w.reshape(heads, 2, hd // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)

    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        meta.update({
            f"layers.{i}.attention.wq.weight": to_interleaved(sd[p + "self_attn.q_proj.weight"], nh),
            f"layers.{i}.attention.wk.weight": to_interleaved(sd[p + "self_attn.k_proj.weight"], nkv),
            f"layers.{i}.attention.wv.weight": sd[p + "self_attn.v_proj.weight"],
            f"layers.{i}.attention.wo.weight": sd[p + "self_attn.o_proj.weight"],
            f"layers.{i}.feed_forward.w1.weight": sd[p + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": sd[p + "mlp.up_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": sd[p + "mlp.down_proj.weight"],
            f"layers.{i}.attention_norm.weight": sd[p + "input_layernorm.weight"],
            f"layers.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        })
    meta["output.weight"] = sd["model.embed_tokens.weight"]  # the original layout always stores the head
    save_file({k: np.ascontiguousarray(v) for k, v in meta.items()}, tmp_path / "consolidated.safetensors")
    rp = cfg.rope_parameters
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": nh, "n_kv_heads": nkv,
              "vocab_size": cfg.vocab_size, "hidden_dim": cfg.intermediate_size, "norm_eps": cfg.rms_norm_eps,
              "rope_theta": rp["rope_theta"]}
    (tmp_path / "params.json").write_text(json.dumps(params))
    # llama3 scaling in params.json is Llama 3.1's fixed one; compare against HF without scaling
    ref = build_hf_model("llama3", rope_scaling=None)
    ref.load_state_dict(ck.hf.state_dict())
    model = load(tmp_path)
    assert model.config.rope_layout == "interleaved"
    ids = np.random.default_rng(7).integers(0, cfg.vocab_size, size=(1, 11))
    np.testing.assert_allclose(model(ids), hf_logits(ref, ids), atol=ATOL, rtol=0)


def test_params_json_llama31_rope_scaling_and_ffn_sizing():
    from kiln.models.llama import LlamaConfig

    # Llama 3.1 8B's params.json
    cfg = LlamaConfig.from_meta_params({"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
                                        "vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3,
                                        "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True})
    assert cfg.intermediate_size == 14336 and cfg.head_dim == 128
    hf_cfg = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0,
                                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192})
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    np.testing.assert_allclose(cfg.rope.inv_freq(cfg.head_dim), ref.numpy(), rtol=1e-6)
    llama2_7b = LlamaConfig.from_meta_params({"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256,
                                              "norm_eps": 1e-5, "vocab_size": 32000})
    assert llama2_7b.intermediate_size == 11008 and llama2_7b.rope.type == "default"


# ---- text in, text out -------------------------------------------------------------------------

def test_generate_text_matches_hf_tokenizer_and_generate(text_checkpoint):
    ck, hf_tok = text_checkpoint
    model = load(ck.path)
    prompt = "Once upon a time"
    enc = hf_tok(prompt, return_tensors="np")
    assert model.tokenizer.encode(prompt) == enc["input_ids"][0].tolist()
    ref_seq, _ = hf_generate(ck.hf, enc["input_ids"], enc["attention_mask"], max_new_tokens=16)
    want = hf_tok.decode(ref_seq[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    pieces = []
    assert model.generate_text(prompt, max_new_tokens=16, stream=pieces.append) == want
    assert "".join(pieces) == want and len(pieces) > 1


def test_generate_text_batch_and_chat_match_hf(text_checkpoint):
    ck, hf_tok = text_checkpoint
    model = load(ck.path)
    prompts = ["Hello world!", "The quick brown fox jumps over"]
    hf_tok.padding_side = "left"
    enc = hf_tok(prompts, return_tensors="np", padding=True)
    ref_seq, _ = hf_generate(ck.hf, enc["input_ids"], enc["attention_mask"], max_new_tokens=10)
    want = hf_tok.batch_decode(ref_seq[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert model.generate_text(prompts, max_new_tokens=10) == want

    msgs = [{"role": "user", "content": "How are you today?"}]
    chat_ids = np.asarray(hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])[None]
    ref_seq, _ = hf_generate(ck.hf, chat_ids, None, max_new_tokens=10)
    want = hf_tok.decode(ref_seq[0, chat_ids.shape[1]:], skip_special_tokens=True)
    assert model.generate_text(msgs[0]["content"], chat=True, max_new_tokens=10) == want


@pytest.mark.parametrize("chat", [False, True])
def test_kiln_run_cli_prints_the_continuation(text_checkpoint, chat):
    ck, hf_tok = text_checkpoint
    prompt = "Hello world"
    if chat:
        ids = np.asarray(hf_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                    add_generation_prompt=True, return_dict=True)["input_ids"])[None]
    else:
        ids = hf_tok(prompt, return_tensors="np")["input_ids"]
    ref_seq, _ = hf_generate(ck.hf, ids, None, max_new_tokens=12)
    want = hf_tok.decode(ref_seq[0, ids.shape[1]:], skip_special_tokens=True)
    res = subprocess.run([sys.executable, "-m", "kiln.cli", "run", str(ck.path), "--prompt", prompt,
                          "--max-new-tokens", "12"] + (["--chat"] if chat else []),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ("" if chat else prompt) + want + "\n"
    assert "compiling" in res.stderr and "tokens/s" in res.stderr


# ---- bad checkpoints -----------------------------------------------------------------------------

@pytest.fixture
def broken(tmp_path):
    """A fresh copy of a small checkpoint to damage."""
    save_checkpoint(tmp_path, "qwen2")
    return tmp_path


def _rewrite(path, fn):
    tensors = dict(load_file(path))
    fn(tensors)
    save_file(tensors, path)


def test_missing_key_is_named(broken):
    _rewrite(broken / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers\.1\.self_attn\.k_proj\.weight'"):
        load(broken)


def test_missing_untied_head_is_named(broken):
    _rewrite(broken / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load(broken)


def test_wrong_shape_is_named(broken):
    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-1].copy()
    _rewrite(broken / "model.safetensors", shrink)
    with pytest.raises(CheckpointError, match=r"up_proj\.weight' has shape \(63, 32\), expected \(64, 32\)"):
        load(broken)


def test_truncated_safetensors(broken):
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load(broken)


def test_corrupted_header(broken):
    f = broken / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:8 + 16] = b"\xff" * 16
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="not valid UTF-8 JSON"):
        load(broken)


def test_unsupported_model_type(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"model_type 'gpt_neox' is not supported; supported types: .*llama"):
        load(broken)


def test_unsupported_rope_type(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        load(broken)


def test_unused_keys_warn(broken):
    _rewrite(broken / "model.safetensors", lambda t: t.update({
        "model.layers.0.extra.weight": np.zeros(3, np.float32), "vision_tower.proj": np.ones(2, np.float32)}))
    with pytest.warns(UserWarning, match=r"2 checkpoint tensors were not used: .*layers\.0\.extra\.weight.*vision_tower"):
        load(broken)


def test_clean_checkpoint_loads_without_warnings(broken):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(broken)


# ---- generation settings -------------------------------------------------------------------------

def test_explicit_position_ids_match_hf(checkpoint):
    ck = checkpoint("qwen3")
    model = load(ck.path)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, ck.vocab_size, size=(2, 6))
    pos = rng.permutation(40)[:12].reshape(2, 6)  # not a shifted arange: RoPE differences are visible
    with torch.no_grad():
        ref = ck.hf(torch.from_numpy(ids), position_ids=torch.from_numpy(pos)).logits.numpy()
    np.testing.assert_allclose(model(ids, position_ids=pos), ref, atol=ATOL, rtol=0)


def test_repetition_penalty_and_hf_default_length(checkpoint):
    ck = checkpoint("llama3")
    model = load(ck.path)
    ids, mask = left_padded_pair(ck.vocab_size)
    assert_generation_matches(model, ck.hf, ids, mask, max_new_tokens=16, repetition_penalty=1.8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF recommends max_new_tokens; its default is what is tested here
        with torch.no_grad():
            ref = ck.hf.generate(torch.from_numpy(ids[:1]), do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(ids[:1]), ref)
    assert ref.shape[1] == ids.shape[1] + 20  # HF's default: 20 new tokens


def test_generation_config_json_sets_defaults(tmp_path):
    ck = save_checkpoint(tmp_path, "mistral")
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    gen.update(max_new_tokens=7, repetition_penalty=1.5)
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = np.random.default_rng(9).integers(0, ck.vocab_size, size=(1, 5))
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(ids)).numpy()
    assert ref.shape[1] == 5 + 7
    np.testing.assert_array_equal(load(tmp_path).generate(ids), ref)


def test_sampling_is_seeded_and_top_k_1_is_greedy(checkpoint):
    ck = checkpoint("qwen2")
    model = load(ck.path)
    ids = np.random.default_rng(10).integers(0, ck.vocab_size, size=(2, 5))
    greedy = model.generate(ids, max_new_tokens=8)
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=8, do_sample=True, top_k=1, seed=0), greedy)
    a = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=5.0, top_k=0, seed=1)
    b = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=5.0, top_k=0, seed=1)
    c = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=5.0, top_k=0, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy).any()


def test_bad_generate_arguments(checkpoint):
    ck = checkpoint("qwen2")
    model = load(ck.path)
    with pytest.raises(TypeError, match="num_beams"):
        model.generate(np.zeros((1, 3), np.int64), max_new_tokens=2, num_beams=4)
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 144\)"):
        model(np.full((1, 3), 144))
    with pytest.raises(ValueError, match="nothing to generate"):
        model.generate(np.zeros((1, 30), np.int64), max_length=20)
