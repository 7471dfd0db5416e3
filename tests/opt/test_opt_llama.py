"""The 30-layer Llama graph written in primitives: every fusion fires, and the logits match HF transformers.

Same layer count and structure as the SmolLM2-135M benchmark graph, with tiny widths so
the test is fast. The reference is transformers' LlamaForCausalLM with the same weights.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import llama_primitive_graph as L

DIMS = replace(L.TINY, layers=30)
SEQ = 6


@pytest.fixture(scope="module")
def compiled():
    g = L.build(DIMS, seq=SEQ)
    return g, kiln.compile(g)


def test_all_llama_fusions_fire(compiled):
    _, cg = compiled
    r = cg.report
    n = DIMS.layers
    assert r.optimized and not r.optimizer_fell_back
    assert r.fusions == {
        "attention": n,                 # softmax(QK^T*scale+mask)V with GQA, one per layer
        "sibling_matmuls": 2 * n,       # Q/K/V and gate/up: one matmul each over concatenated weights
        "linear+swiglu": n,             # gate/up as one matmul with the SwiGLU epilogue
        "linear+residual": 2 * n,       # o_proj and down_proj add the residual in their epilogue
        "rms_norm+linear": 2 * n + 1,   # both norms per layer and the final norm as matmul prologues
        "linear": 4 * n + 1,            # qkv, o, gate/up, down per layer and the lm_head
    }
    for rule in ("silu", "swiglu", "softmax_stable", "rms_norm", "rms_norm_weight", "linear",
                 "transpose_into_matmul_b", "attention", "attention_gqa", "sibling_matmuls"):
        assert r.rule_matches.get(rule, 0) >= n, rule
    ops = {node.op for node in cg.graph.compute_nodes()}
    assert not ops & {"sigmoid", "rsqrt", "mean", "exp", "max", "sum", "div", "matmul"}
    assert r.kernels["matmul"] == 4 * n + 1 and r.kernels["attention"] == n
    # peak memory with the arena plan is far below one buffer per intermediate
    assert r.peak_bytes_planned * 4 < r.peak_bytes_unplanned


def test_logits_match_transformers(compiled):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    g, cg = compiled
    d = DIMS
    cfg = transformers.LlamaConfig(
        vocab_size=d.vocab, hidden_size=d.hidden, intermediate_size=d.intermediate,
        num_hidden_layers=d.layers, num_attention_heads=d.heads, num_key_value_heads=d.kv_heads,
        head_dim=d.head_dim, rms_norm_eps=d.rms_eps, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": d.rope_theta})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norm weights away from 1 so the test sees them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cg.load_params({name: state[name] for name in g.parameters})
    ids = np.random.default_rng(0).integers(0, d.vocab, (1, SEQ))
    got = cg.run(input_ids=ids)["logits"]
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
