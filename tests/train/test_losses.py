"""Losses against torch.nn.functional: values and gradients (through kiln.autodiff); the fused
cross-entropy against the log_softmax path it replaced, down to a tiny Llama's training steps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.autodiff import grad, grad_name
from kiln.models.llama import LlamaConfig, LlamaGraphs
from kiln.train import AdamW, TrainStep, accuracy, bce_with_logits, cross_entropy, mse_loss
from unfused_cross_entropy import cross_entropy_log_softmax


def _value_and_grad(build, arrays, wrt):
    g = kiln.Graph()
    vals = {k: g.input(k, a.shape, a.dtype) for k, a in arrays.items()}
    g.output("loss", build(g, vals))
    return kiln.compile(grad(g, [wrt])).run(**arrays)


def _torch_value_and_grad(fn, arrays, wrt):
    t = {k: torch.from_numpy(a) for k, a in arrays.items()}
    t[wrt].requires_grad_(True)
    loss = fn(**t)
    (gr,) = torch.autograd.grad(loss, [t[wrt]])
    return loss.detach().numpy(), gr.numpy()


CE_CASES = [
    dict(), dict(reduction="sum"), dict(label_smoothing=0.1), dict(ignore_index=2),
    dict(ignore_index=-100, label_smoothing=0.2, reduction="sum"), dict(ignore_index=1, label_smoothing=0.3),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", CE_CASES, ids=[str(k) for k in CE_CASES])
def test_cross_entropy_matches_torch(kw, dtype, rng):
    logits = rng.standard_normal((2, 5, 4)).astype(dtype)   # [B, S, C]: classes last, like an LM
    labels = rng.integers(0, 4, (2, 5))
    labels[0, 1] = kw.get("ignore_index", -100)
    arrays = {"logits": logits, "labels": labels}
    res = _value_and_grad(lambda g, v: cross_entropy(g, v["logits"], v["labels"], **kw), arrays, "logits")
    want, want_g = _torch_value_and_grad(
        lambda logits, labels: F.cross_entropy(logits.permute(0, 2, 1), labels, **kw), arrays, "logits")
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(res["loss"], want, rtol=tol, atol=tol)
    np.testing.assert_allclose(res[grad_name("logits")], want_g, rtol=tol, atol=tol)


def test_cross_entropy_reduction_none_zeroes_ignored(rng):
    logits = rng.standard_normal((6, 3))
    labels = np.array([0, 2, -100, 1, -100, 2])
    g = kiln.Graph()
    out = cross_entropy(g, g.input("l", (6, 3), "float64"), g.input("y", (6,), "int64"), reduction="none")
    g.output("per", out)
    got = kiln.compile(g).run(l=logits, y=labels)["per"]
    want = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="none").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", CE_CASES + [dict(reduction="none", ignore_index=0, label_smoothing=0.1)],
                         ids=[str(k) for k in CE_CASES] + ["none"])
def test_cross_entropy_equals_the_log_softmax_path(kw, dtype, rng):
    """Losses and gradients of the fused op equal log_softmax -> take_along_axis -> mean."""
    logits = (rng.standard_normal((3, 4, 37)) * 4).astype(dtype)
    labels = rng.integers(0, 37, (3, 4))
    labels[1, :2] = kw.get("ignore_index", -100)
    arrays = {"logits": logits, "labels": labels}
    got, want = ({}, {})
    for fn, res in ((cross_entropy, got), (cross_entropy_log_softmax, want)):
        g = kiln.Graph()
        v = {k: g.input(k, a.shape, a.dtype) for k, a in arrays.items()}
        per = fn(g, v["logits"], v["labels"], **kw)
        g.output("loss", g.sum(per) if kw.get("reduction") == "none" else per)
        g.output("per", per)
        res.update(kiln.compile(grad(g, ["logits"])).run(**arrays))
    tol = 1e-13 if dtype == "float64" else 2e-6
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol, err_msg=k)


def _mixed_logits_loss(fn, batch=2, seq=5, vocab=37, **kw):
    """bfloat16 logits cast to float32 and sliced to the next-token positions (an LM head), and the loss."""
    g = kiln.Graph()
    h = g.input("h", (batch, seq, vocab), "bfloat16")
    logits = g.slice(g.cast(h, dtype="float32"), axes=[1], starts=[0], ends=[seq - 1])
    g.output("loss", fn(g, logits, g.input("labels", (batch, seq - 1), "int64"), **kw))
    return g


def test_cross_entropy_of_cast_half_logits_writes_a_half_gradient(rng):
    """A float32 cast of bfloat16 logits is read as bfloat16: the gradient graph holds no float32
    [..., V] tensor, and loss and gradient equal the log_softmax path on the float32 logits."""
    feeds = {"h": (rng.standard_normal((2, 5, 37)) * 3).astype(kiln.as_dtype("bfloat16").np_dtype),
             "labels": rng.integers(0, 37, (2, 4))}
    feeds["labels"][0, 1] = -100
    fused = grad(_mixed_logits_loss(cross_entropy, label_smoothing=0.1), ["h"])
    cg = kiln.compile(fused)
    wide = [t for t in cg.plan.types.values() if t.shape and t.shape[-1] == 37 and t.dtype.name == "float32"]
    assert not wide, f"float32 [..., V] tensors in the fused gradient graph: {wide}"
    got = cg.run(**feeds)
    want = kiln.compile(grad(_mixed_logits_loss(cross_entropy_log_softmax, label_smoothing=0.1), ["h"])).run(**feeds)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    gh, wh = got[grad_name("h")].astype(np.float32), want[grad_name("h")].astype(np.float32)
    assert got[grad_name("h")].dtype == want[grad_name("h")].dtype
    np.testing.assert_allclose(gh, wh, rtol=2 ** -8, atol=1e-6)   # one bfloat16 rounding of the same float32
    assert not gh[:, -1].any()   # the position the slice drops


def _tiny_llama_loss(loss_fn, batch=2, seq=8):
    cfg = LlamaConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                      rms_norm_eps=1e-5)
    g = LlamaGraphs(cfg, "float32").prefill_graph(batch, seq)
    logits = g.slice(g.outputs["logits"], axes=[1], starts=[0], ends=[seq - 1])
    g.outputs = {"loss": loss_fn(g, logits, g.input("labels", (batch, seq - 1), "int64"))}
    return g


def test_tiny_llama_train_steps_equal_the_log_softmax_path():
    """TrainStep (forward, fused backward, clipping, AdamW) on the fused loss: the losses and the
    parameters after three steps equal those of the old log_softmax path (to float32 rounding, which
    Adam's normalization amplifies for the entries whose gradients are near 0: atol 1e-6 of steps of 1e-2)."""
    rng = np.random.default_rng(4)
    fused, old = _tiny_llama_loss(cross_entropy), _tiny_llama_loss(cross_entropy_log_softmax)
    params = {n: (rng.standard_normal(v.shape) * 0.1 + (1.0 if n.endswith("norm.weight") else 0.0)).astype(np.float32)
              for n, v in fused.parameters.items()}
    batches = []
    for _ in range(3):
        ids = rng.integers(0, 64, (2, 8))
        labels = ids[:, 1:].copy()
        labels[1, 4:] = -100
        batches.append({"input_ids": ids, "attention_mask": np.ones((2, 8), np.int64),
                        "position_ids": np.broadcast_to(np.arange(8), (2, 8)).copy(), "labels": labels})
    steps = []
    for graph in (fused, old):
        step = TrainStep(graph, AdamW(lr=0.01, weight_decay=0.1), clip_norm=1.0)
        step.init(params)
        steps.append((step, [step(b, lr=0.01) for b in batches]))
    (got, got_reports), (want, want_reports) = steps
    assert "softmax_cross_entropy_backward" in {s.op for s in got._fused.plan.steps}
    for r, w in zip(got_reports, want_reports):
        for k in w:
            np.testing.assert_allclose(r[k], w[k], rtol=1e-6, err_msg=k)
    for n in params:
        np.testing.assert_allclose(got.params[n], want.params[n], rtol=1e-5, atol=1e-6, err_msg=n)
    assert max(np.abs(got.params[n] - params[n]).max() for n in params) > 0.01


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(reduction, rng):
    arrays = {"p": rng.standard_normal((3, 4)), "t": rng.standard_normal((3, 4))}
    res = _value_and_grad(lambda g, v: mse_loss(g, v["p"], v["t"], reduction=reduction), arrays, "p")
    want, want_g = _torch_value_and_grad(lambda p, t: F.mse_loss(p, t, reduction=reduction), arrays, "p")
    np.testing.assert_allclose(res["loss"], want, rtol=1e-12)
    np.testing.assert_allclose(res[grad_name("p")], want_g, rtol=1e-12)


@pytest.mark.parametrize("pos_weight", [False, True])
def test_bce_with_logits_matches_torch(pos_weight, rng):
    x = rng.standard_normal((5, 3)) * 4
    x[0, 0] = 40.0  # far into the tails: no overflow
    x[0, 1] = -40.0
    arrays = {"x": x, "y": rng.uniform(0, 1, (5, 3)), "w": rng.uniform(0.5, 2, (3,))}

    def build(g, v):
        return bce_with_logits(g, v["x"], v["y"], pos_weight=v["w"] if pos_weight else None)
    res = _value_and_grad(build, arrays, "x")
    want, want_g = _torch_value_and_grad(
        lambda x, y, w: F.binary_cross_entropy_with_logits(x, y, pos_weight=w if pos_weight else None), arrays, "x")
    np.testing.assert_allclose(res["loss"], want, rtol=1e-12)
    np.testing.assert_allclose(res[grad_name("x")], want_g, rtol=1e-10, atol=1e-15)


def test_accuracy_metric(rng):
    logits = rng.standard_normal((8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    g = kiln.Graph()
    g.output("acc", accuracy(g, g.input("l", (8, 5)), g.input("y", (8,), "int64")))
    got = kiln.compile(g).run(l=logits, y=labels)["acc"]
    assert got == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_loss_errors_name_the_problem():
    g = kiln.Graph()
    logits = g.input("l", (4, 3))
    with pytest.raises(kiln.GraphError, match=r"labels must be integers of shape \(4,\)"):
        cross_entropy(g, logits, g.input("y", (4, 3), "int64"))
    with pytest.raises(kiln.GraphError, match="reduction must be one of"):
        cross_entropy(g, logits, g.input("y2", (4,), "int64"), reduction="avg")
    with pytest.raises(kiln.GraphError, match="label_smoothing must be in"):
        cross_entropy(g, logits, g.input("y3", (4,), "int64"), label_smoothing=1.5)
    with pytest.raises(kiln.GraphError, match="pred and target must be float tensors of one type"):
        mse_loss(g, logits, g.input("t", (4, 2)))
