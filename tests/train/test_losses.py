"""Losses against torch.nn.functional: values and gradients (through kiln.autodiff)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.autodiff import grad, grad_name
from kiln.train import accuracy, bce_with_logits, cross_entropy, mse_loss


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
