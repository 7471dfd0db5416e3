"""Gradients of every parameter of a tiny random Llama-family model match torch autograd on the
HF model with the same weights (loaded through kiln's real checkpoint loader).

The loss is HF's causal-LM loss: cross-entropy of logits[:, :-1] against input_ids[:, 1:].
kiln fuses q/k/v and gate/up into one matrix each, so those gradients are split for comparison.
"""

import numpy as np
import pytest
import torch

import kiln
from kiln.autodiff import grad
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.weight_map import WeightMap
from kiln.models.llama import LlamaGraphs, llama_params, read_llama_config
from kiln.train import cross_entropy

transformers = pytest.importorskip("transformers")

COMMON = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, vocab_size=96,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
FAMILIES = {
    "llama_tied_gqa": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
}
B, S = 2, 7


def _hf_model(family, tmp_path):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**COMMON, **extra)).eval()
    hf.save_pretrained(tmp_path)
    return hf


def _kiln_grads(path, ids, dtype):
    cfg, _, filename = read_llama_config(path)
    params = llama_params(WeightMap(load_checkpoint_dir(path, filename=filename), source=str(path)), cfg, dtype)
    g = LlamaGraphs(cfg, dtype).prefill_graph(B, S)
    logits = g.slice(g.outputs["logits"], axes=[1], starts=[0], ends=[S - 1])
    if logits.dtype.name != dtype:
        logits = g.cast(logits, dtype=dtype)
    g.output("loss", cross_entropy(g, logits, g.input("labels", (B, S - 1), "int64")))
    cg = kiln.compile(_loss_grad(g, params))
    cg.load_params(params)
    res = cg.run(input_ids=ids, attention_mask=np.ones((B, S), np.int64),
                 position_ids=np.broadcast_to(np.arange(S), (B, S)).copy(), labels=ids[:, 1:].copy())
    return cfg, res


def _loss_grad(g, params):
    gg = grad(g, list(params), "loss")
    gg.outputs = {k: v for k, v in gg.outputs.items() if k == "loss" or k.startswith("grad/")}
    return gg


def _split_fused(cfg, res):
    """kiln gradient per HF parameter name (fused matrices split back into q/k/v and gate/up)."""
    hd, nh, nkv, inter = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    out = {}
    for k, v in res.items():
        if not k.startswith("grad/"):
            continue
        name = k[len("grad/"):]
        if "qkv_proj" in name:
            kind = name.rsplit(".", 1)[1]
            parts = np.split(v, [nh * hd, (nh + nkv) * hd], axis=0)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[name.replace("qkv_proj." + kind, f"{proj}.{kind}")] = part
        elif "gate_up_proj" in name:
            gate, up = np.split(v, [inter], axis=0)
            out[name.replace("gate_up_proj", "gate_proj")] = gate
            out[name.replace("gate_up_proj", "up_proj")] = up
        else:
            out[name] = v
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_llama_gradients_match_hf_autograd(family, dtype, tmp_path):
    hf = _hf_model(family, tmp_path)
    ids = np.random.default_rng(1).integers(0, COMMON["vocab_size"], (B, S))
    cfg, res = _kiln_grads(tmp_path, ids, dtype)

    model = hf.double() if dtype == "float64" else hf
    t_ids = torch.from_numpy(ids)
    out = model(input_ids=t_ids, labels=t_ids)
    model.zero_grad()
    out.loss.backward()
    want = {n: p.grad.detach().numpy() for n, p in model.named_parameters() if p.grad is not None}

    got = _split_fused(cfg, res)
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    tol = 1e-6 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(res["loss"], out.loss.detach().numpy(), rtol=tol)
    for name, w in want.items():
        err = np.abs(got[name] - w).max() / max(np.abs(w).max(), 1e-30)
        assert err <= tol, f"{name}: relative error {err:.2e}"
