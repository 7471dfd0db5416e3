"""Training steps compiled for the Triton backend (`device="cuda"`) match the NumPy backend.

Without a GPU the Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here
before any kernel module is imported, as tests/triton/conftest.py does); with one they run on it.
The whole step (forward, backward, clipping, optimizer update) is one compiled graph on each
backend; after two steps every parameter and optimizer-state entry must agree to float32
rounding. The tiny Llama's loss runs the generated cross-entropy kernels (forward and backward),
and its attention backward the flash backward kernels; the gradient of an additive mask
(attention_backward's mask_grad) and the backward ops that run as torch fallbacks on the GPU
(index_add, pad) get their own check against NumPy.
"""

import os
import tempfile

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-train-triton-tests-"))

import kiln
from kiln.models.llama import LlamaConfig, LlamaGraphs
from kiln.train import SGD, AdamW, TrainStep, cross_entropy, mse_loss


def _mlp(batch=8):
    g = kiln.Graph("mlp")
    x = g.input("x", (batch, 5))
    t = g.input("t", (batch, 3))
    h = g.tanh(g.linear(x, g.parameter("w1", (7, 5)), g.parameter("b1", (7,))))
    g.output("loss", mse_loss(g, g.linear(h, g.parameter("w2", (3, 7))), t))
    return g


def _tiny_llama(batch=2, seq=8):
    cfg = LlamaConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                      rms_norm_eps=1e-5)
    g = LlamaGraphs(cfg, "float32").prefill_graph(batch, seq)
    logits = g.slice(g.outputs["logits"], axes=[1], starts=[0], ends=[seq - 1])
    g.outputs = {"loss": cross_entropy(g, logits, g.input("labels", (batch, seq - 1), "int64"))}
    return g


def _llama_batches(rng, steps, batch=2, seq=8, vocab=64):
    out = []
    for _ in range(steps):
        ids = rng.integers(0, vocab, (batch, seq))
        out.append({"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
                    "position_ids": np.broadcast_to(np.arange(seq), (batch, seq)).copy(),
                    "labels": ids[:, 1:].copy()})
    return out


def _random_params(graph, rng, scale):
    return {n: (rng.standard_normal(v.shape) * (1.0 if n.endswith("norm.weight") else scale)).astype(np.float32)
            + (1.0 if n.endswith("norm.weight") else 0.0) for n, v in graph.parameters.items()}


def _train(graph, make_opt, params, batches, device, **kw):
    step = TrainStep(graph, make_opt(), device=device, **kw)
    step.init(params)
    reports = [step(b, lr=0.01) for b in batches]
    return step, reports


def _assert_same_training(graph, make_opt, params, batches, rtol, atol, **kw):
    ref, ref_reports = _train(graph, make_opt, params, batches, "cpu", **kw)
    got, got_reports = _train(graph, make_opt, params, batches, "cuda", **kw)
    assert got._fused.device == "cuda" and type(got._fused.executor).__name__ == "TritonExecutor"
    for r, w in zip(got_reports, ref_reports):
        assert r.keys() == w.keys()
        for k in r:
            np.testing.assert_allclose(r[k], w[k], rtol=rtol, err_msg=k)
    for name in ref.params:
        assert got.params[name].dtype == np.float32
        np.testing.assert_allclose(got.params[name], ref.params[name], rtol=rtol, atol=atol, err_msg=name)
    for name in ref.opt_state:
        np.testing.assert_allclose(got.opt_state[name], ref.opt_state[name], rtol=rtol, atol=atol, err_msg=name)
    moved = max(np.abs(got.params[n] - params[n]).max() for n in params)
    assert moved > 10 * atol   # the steps changed the parameters by far more than the tolerance
    return got


@pytest.mark.parametrize("opt", ["adamw", "sgd_momentum"])
def test_mlp_step_on_triton_matches_numpy(opt):
    rng = np.random.default_rng(0)
    g = _mlp()
    params = _random_params(g, rng, 0.5)
    batches = [{"x": rng.standard_normal((8, 5)).astype(np.float32),
                "t": rng.standard_normal((8, 3)).astype(np.float32)} for _ in range(2)]
    make = (lambda: AdamW(lr=0.01, weight_decay=0.1)) if opt == "adamw" else \
        (lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01))
    _assert_same_training(g, make, params, batches, rtol=1e-5, atol=1e-6, clip_norm=0.5)


def test_tiny_llama_step_on_triton_matches_numpy():
    rng = np.random.default_rng(1)
    g = _tiny_llama()
    params = _random_params(g, rng, 0.1)
    step = _assert_same_training(g, lambda: AdamW(lr=0.01), params, _llama_batches(rng, 2), rtol=1e-4, atol=1e-5,
                                 clip_norm=1.0)
    ex = step._fused.executor
    labels = {launch.label for launch in ex.program.launches}
    assert {"softmax_cross_entropy", "softmax_cross_entropy_backward"} <= labels
    assert [type(l.fn).__name__ for l in ex.program.launches if l.label == "attention_backward"] == ["AttentionBackward"]
    assert not any(f.startswith("attention") for f in ex.stats()["fallbacks"])


@pytest.mark.parametrize("case", ["gqa_causal_bool_mask", "softcap_window_float_mask_grad_dlse"])
def test_attention_backward_on_triton_matches_numpy(case):
    """The fused attention backward against the NumPy kernel, including a fully masked query row
    (gradients 0): the flash kernels, or with the gradient of an additive mask the torch fallback."""
    rng = np.random.default_rng(2)
    b, hq, hk, sq, sk, d = 2, 4, 2, 5, 6, 8
    g = kiln.Graph("attention_backward")
    q = g.input("q", (b, hq, sq, d))
    k = g.input("k", (b, hk, sk, d))
    v = g.input("v", (b, hk, sk, d))
    feeds = {n: rng.standard_normal(x.shape).astype(np.float32) for n, x in (("q", q), ("k", k), ("v", v))}
    if case == "gqa_causal_bool_mask":
        attrs = {"causal": True}
        mask = g.input("mask", (b, 1, sq, sk), "bool")
        feeds["mask"] = rng.random((b, 1, sq, sk)) > 0.3
        feeds["mask"][0, 0, 2] = False            # a fully masked query row
        dlse = None
    else:
        attrs = {"softcap": 2.0, "window": 3, "scale": 0.3}
        mask = g.input("mask", (b, 1, sq, sk))
        feeds["mask"] = rng.standard_normal((b, 1, sq, sk)).astype(np.float32)
        dlse = g.input("dlse", (b, hq, sq))
        feeds["dlse"] = rng.standard_normal((b, hq, sq)).astype(np.float32)
    out, lse = g.attention_lse(q, k, v, mask, **attrs)
    dout = g.input("dout", out.shape)
    feeds["dout"] = rng.standard_normal(out.shape).astype(np.float32)
    grads = g.attention_backward(q, k, v, mask, out, lse, dout, dlse, mask_grad=dlse is not None, **attrs)
    for name, x in zip(("dq", "dk", "dv", "dmask"), grads):
        g.output(name, x)
    want = kiln.compile(g, device="cpu", optimize=False).run(**feeds)
    cg = kiln.compile(g, device="cuda", optimize=False)
    got = cg.run(**feeds)
    falls = cg.executor.stats()["fallbacks"]
    assert ("attention_backward [torch]" in falls) == (dlse is not None)   # mask_grad only in that case
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    if case == "gqa_causal_bool_mask":
        assert not got["dq"][0, :, 2].any()
