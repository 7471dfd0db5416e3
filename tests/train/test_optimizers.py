"""Optimizer steps, clipping and gradient accumulation against torch.optim on a small MLP."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.train import SGD, Adam, AdamW, TrainStep, mse_loss

SHAPES = {"w1": (6, 4), "b1": (6,), "w2": (2, 6)}


def mlp(batch=8, dtype="float32"):
    g = kiln.Graph("mlp")
    x = g.input("x", (batch, 4), dtype)
    t = g.input("t", (batch, 2), dtype)
    h = g.tanh(g.linear(x, g.parameter("w1", SHAPES["w1"], dtype), g.parameter("b1", SHAPES["b1"], dtype)))
    y = g.linear(h, g.parameter("w2", SHAPES["w2"], dtype))
    g.output("loss", mse_loss(g, y, t))
    return g


def torch_loss(p, x, t):
    return F.mse_loss(F.linear(torch.tanh(F.linear(x, p["w1"], p["b1"])), p["w2"]), t)


def _data(rng, dtype, steps, batch=8):
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    batches = [{"x": rng.standard_normal((batch, 4)).astype(dtype), "t": rng.standard_normal((batch, 2)).astype(dtype)}
               for _ in range(steps)]
    return params, batches


OPTIMIZERS = {
    "sgd": (lambda: SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum_wd": (lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (lambda: SGD(lr=0.05, momentum=0.8, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    "sgd_dampening": (lambda: SGD(lr=0.05, momentum=0.9, dampening=0.3),
                      lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3)),
    "adam": (lambda: Adam(lr=0.01, betas=(0.8, 0.95)), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95))),
    "adam_l2": (lambda: Adam(lr=0.01, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    "adamw": (lambda: AdamW(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    "adamw_wd": (lambda: AdamW(lr=0.02, weight_decay=0.3, eps=1e-6),
                 lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.3, eps=1e-6)),
}


def _torch_run(make_opt, params, batches, lrs, clip=None, accumulation=1):
    p = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    opt = make_opt(list(p.values()))
    norms = []
    for i, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        for mb in batches[i * accumulation:(i + 1) * accumulation]:
            (torch_loss(p, torch.from_numpy(mb["x"]), torch.from_numpy(mb["t"])) / accumulation).backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(p.values()), clip)))
        opt.step()
    return {k: v.detach().numpy() for k, v in p.items()}, opt, norms


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_steps_match_torch_optim(name, dtype, rng):
    make_kiln, make_torch = OPTIMIZERS[name]
    params, batches = _data(rng, dtype, 3)
    lrs = [make_kiln().lr, make_kiln().lr * 0.5, make_kiln().lr * 0.25]  # a schedule changes only an input
    step = TrainStep(mlp(dtype=dtype), make_kiln())
    step.init(params)
    first = None
    for i, (b, lr) in enumerate(zip(batches, lrs)):
        step(b, lr)
        if i == 0:
            first = {k: v.copy() for k, v in step.params.items()}
    want1, _, _ = _torch_run(make_torch, params, batches, lrs[:1])
    want3, opt, _ = _torch_run(make_torch, params, batches, lrs)
    for k in SHAPES:  # one step, then three (momentum and bias corrections in play)
        tol = 1e-6 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(first[k], want1[k], rtol=tol, atol=tol, err_msg=f"{k} after one step")
        np.testing.assert_allclose(step.params[k], want3[k], rtol=tol, atol=tol, err_msg=f"{k} after 3 steps")
        assert step.params[k].dtype == np.dtype(dtype)
    torch_state = {k: opt.state[p] for k, p in zip(SHAPES, opt.param_groups[0]["params"])}
    for slot in step.optimizer.slots:
        for k in SHAPES:
            tol = 1e-6 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(step.opt_state[f"{slot}/{k}"], torch_state[k][slot].numpy(),
                                       rtol=tol, atol=tol, err_msg=f"{slot} of {k}")
    assert step.step_count == 3


def test_global_norm_clipping_matches_torch(rng):
    params, batches = _data(rng, "float64", 2)
    step = TrainStep(mlp(dtype="float64"), SGD(lr=0.1, momentum=0.5), clip_norm=0.3)
    step.init(params)
    reports = [step(b, 0.1) for b in batches]
    want, _, norms = _torch_run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5), params, batches, [0.1, 0.1],
                                clip=0.3)
    assert [r["grad_norm"] for r in reports] == pytest.approx(norms, rel=1e-12)
    assert norms[0] > 0.3  # the clip is active
    for k in SHAPES:
        np.testing.assert_allclose(step.params[k], want[k], rtol=1e-12, atol=1e-12)


def test_gradient_accumulation_equals_the_large_batch(rng):
    """Two micro-batches of 4 accumulate to the same update as one batch of 8 (mean loss)."""
    params, batches = _data(rng, "float64", 4, batch=4)
    acc = TrainStep(mlp(batch=4, dtype="float64"), AdamW(lr=0.01), accumulation=2, clip_norm=1.0)
    acc.init(params)
    r1 = acc(batches[:2], 0.01)
    acc(batches[2:], 0.01)
    want, _, _ = _torch_run(lambda p: torch.optim.AdamW(p, lr=0.01), params, batches, [0.01, 0.01], clip=1.0,
                            accumulation=2)
    for k in SHAPES:
        np.testing.assert_allclose(acc.params[k], want[k], rtol=1e-10, atol=1e-12)
    big = TrainStep(mlp(batch=8, dtype="float64"), AdamW(lr=0.01), clip_norm=1.0)
    big.init(params)
    r_big = big({k: np.concatenate([batches[0][k], batches[1][k]]) for k in ("x", "t")}, 0.01)
    assert r1["loss"] == pytest.approx(r_big["loss"], rel=1e-12)
    assert r1["grad_norm"] == pytest.approx(r_big["grad_norm"], rel=1e-12)


def test_trainable_subset_leaves_others_untouched(rng):
    params, batches = _data(rng, "float32", 1)
    step = TrainStep(mlp(), SGD(lr=0.1), trainable=["w2"])
    step.init(params)
    step(batches[0], 0.1)
    assert np.array_equal(step.params["w1"], params["w1"]) and np.array_equal(step.params["b1"], params["b1"])
    assert not np.array_equal(step.params["w2"], params["w2"])


def test_step_errors_name_the_problem(rng):
    with pytest.raises(kiln.GraphError, match="trainable parameter 'w9' is not a parameter"):
        TrainStep(mlp(), SGD(), trainable=["w9"])
    with pytest.raises(kiln.GraphError, match="metric 'acc' is not an output"):
        TrainStep(mlp(), SGD(), metrics=["acc"])
    with pytest.raises(kiln.GraphError, match="nesterov needs momentum > 0"):
        SGD(nesterov=True)
    with pytest.raises(kiln.GraphError, match="betas must be in"):
        Adam(betas=(0.9, 1.0))
    step = TrainStep(mlp(), SGD())
    with pytest.raises(RuntimeError, match="call init"):
        step({}, 0.1)
    with pytest.raises(ValueError, match=r"parameters missing \['w2'\]"):
        step.init({"w1": np.zeros((6, 4), np.float32), "b1": np.zeros(6, np.float32)})
    params, batches = _data(rng, "float32", 2)
    step.init(params)
    with pytest.raises(ValueError, match=r"expected 1 micro-batch\(es\), got 2"):
        step(batches, 0.1)


def test_a_second_step_of_the_same_recipe_neither_differentiates_nor_differs(rng, monkeypatch):
    """The second TrainStep of one loss graph and optimizer finds its plan by recipe (no gradient
    graph is built) and steps exactly as the first; another weight decay is another plan."""
    import kiln.train.step as S

    params, batches = _data(rng, "float32", 2)
    first = TrainStep(mlp(), AdamW(lr=0.01, weight_decay=0.25), clip_norm=0.5)
    with monkeypatch.context() as m:
        m.setattr(S, "build_step_graph", lambda *a, **k: pytest.fail("differentiated again"))
        second = TrainStep(mlp(), AdamW(lr=0.01, weight_decay=0.25), clip_norm=0.5)
        with pytest.raises(pytest.fail.Exception, match="differentiated again"):
            TrainStep(mlp(), AdamW(lr=0.01, weight_decay=0.5), clip_norm=0.5)
    assert second._fused.report.cache == "hit"
    for step in (first, second):
        step.init(params)
        for b in batches:
            step(b, 0.01)
    for k in SHAPES:
        np.testing.assert_array_equal(first.params[k], second.params[k])
