"""grad / vjp / jvp / hvp on whole small functions, against torch autograd and torch.func."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.autodiff import cotangent_name, grad, grad_name, hvp, hvp_name, jvp, tangent_name, vjp
from kiln.ir import load_graph, save_graph


def _run(graph, params=None, **inputs):
    cg = kiln.compile(graph)
    if params:
        cg.load_params(params)
    return cg.run(**inputs)


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b.detach().numpy() if torch.is_tensor(b) else b, rtol=tol, atol=tol)


# ---- a small network used by several tests ----------------------------------------------------

def net_graph(batch=4, d=5, h=6, c=3):
    """Two-layer MLP with layer norm, attention over the batch as a sequence, cross-entropy-like loss."""
    g = kiln.Graph("net")
    x = g.input("x", (batch, d), "float64")
    w1, b1 = g.parameter("w1", (h, d), "float64"), g.parameter("b1", (h,), "float64")
    w2 = g.parameter("w2", (c, h), "float64")
    hid = g.tanh(g.layer_norm(g.linear(x, w1, b1)))
    q = g.reshape(hid, shape=[1, 1, batch, h])
    att = g.reshape(g.attention(q, q, q, causal=True), shape=[batch, h])
    logits = g.linear(g.add(att, hid), w2)
    logp = g.log_softmax(logits)
    g.output("logits", logits)
    g.output("loss", g.neg(g.mean(g.sum(g.mul(logp, g.input("t", (batch, c), "float64")), axes=[1]))))
    return g


def net_torch(x, t, w1, b1, w2):
    hid = torch.tanh(F.layer_norm(F.linear(x, w1, b1), (w1.shape[0],)))
    n = hid.shape[0]
    scores = (hid @ hid.T) * hid.shape[1] ** -0.5  # causal self-attention, written out (forward-AD friendly)
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    att = torch.softmax(scores, -1) @ hid
    logits = F.linear(att + hid, w2)
    return -(torch.log_softmax(logits, -1) * t).sum(1).mean()


@pytest.fixture
def net_data(rng):
    params = {"w1": rng.standard_normal((6, 5)), "b1": rng.standard_normal(6), "w2": rng.standard_normal((3, 6))}
    x = rng.standard_normal((4, 5))
    t = np.eye(3)[rng.integers(0, 3, 4)]
    return params, x, t


def test_grad_of_a_network_matches_torch(net_data):
    params, x, t = net_data
    res = _run(grad(net_graph(), ["w1", "b1", "w2", "x"]), params, x=x, t=t)
    tp = {k: torch.from_numpy(v).requires_grad_(True) for k, v in params.items()}
    tx = torch.from_numpy(x).requires_grad_(True)
    loss = net_torch(tx, torch.from_numpy(t), tp["w1"], tp["b1"], tp["w2"])
    want = torch.autograd.grad(loss, [tp["w1"], tp["b1"], tp["w2"], tx])
    _close(res["loss"], loss)
    for name, w in zip(["w1", "b1", "w2", "x"], want):
        _close(res[grad_name(name)], w)


def test_grad_defaults_to_all_float_parameters_and_keeps_outputs(net_data):
    params, x, t = net_data
    g = grad(net_graph())
    assert set(g.outputs) == {"logits", "loss", "grad/w1", "grad/b1", "grad/w2"}
    assert set(g.parameters) == {"w1", "b1", "w2"}
    assert set(grad(net_graph(), keep_outputs=False).outputs) == {"grad/w1", "grad/b1", "grad/w2"}


def test_fan_out_accumulates():
    """x feeds four uses (directly and through a shared intermediate)."""
    g = kiln.Graph()
    x = g.input("x", (3,), "float64")
    s = g.sin(x)
    y = g.add(g.mul(x, x), g.mul(s, g.add(s, x)))
    g.output("loss", g.sum(y))
    xv = np.array([0.3, -1.2, 2.0])
    got = _run(grad(g, ["x"]), x=xv)[grad_name("x")]
    tx = torch.from_numpy(xv).requires_grad_(True)
    ts = torch.sin(tx)
    (want,) = torch.autograd.grad((tx * tx + ts * (ts + tx)).sum(), [tx])
    _close(got, want)


def test_unused_and_non_differentiable_paths_give_zero_gradients():
    g = kiln.Graph()
    x = g.input("x", (4,), "float64")
    unused = g.parameter("unused", (2,), "float64")
    idx = g.argmax(x)  # the loss depends on x only through an index: gradient 0
    onehot = g.one_hot(idx, num_classes=4, dtype="float64")
    g.output("loss", g.sum(onehot))
    del unused
    res = _run(grad(g, ["x", "unused"]), {"unused": np.ones(2)}, x=np.array([1.0, 3.0, 2.0, 0.0]))
    assert np.array_equal(res[grad_name("x")], np.zeros(4))
    assert np.array_equal(res[grad_name("unused")], np.zeros(2))


def test_vjp_takes_cotangents_of_non_scalar_outputs(rng):
    g = kiln.Graph()
    a = g.input("a", (3, 4), "float64")
    b = g.input("b", (4, 2), "float64")
    g.output("y", g.matmul(g.exp(a), b))
    g.output("z", g.sum(a, axes=[1]))
    av, bv = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    cy, cz = rng.standard_normal((3, 2)), rng.standard_normal(3)
    res = _run(vjp(g, ["a", "b"], ["y", "z"]), a=av, b=bv, **{cotangent_name("y"): cy, cotangent_name("z"): cz})
    ta, tb = torch.from_numpy(av).requires_grad_(True), torch.from_numpy(bv).requires_grad_(True)
    out = ((torch.exp(ta) @ tb) * torch.from_numpy(cy)).sum() + (ta.sum(1) * torch.from_numpy(cz)).sum()
    for name, w in zip("ab", torch.autograd.grad(out, [ta, tb])):
        _close(res[grad_name(name)], w)


def test_grad_errors_name_the_problem():
    g = kiln.Graph()
    x = g.input("x", (3,), "float32")
    i = g.input("i", (3,), "int64")
    g.output("y", x)
    g.output("loss", g.sum(x))
    del i
    with pytest.raises(kiln.GraphError, match="loss output 'y' must be a float scalar"):
        grad(g, ["x"], "y")
    with pytest.raises(kiln.GraphError, match="'nope' is not an output"):
        grad(g, ["x"], "nope")
    with pytest.raises(kiln.GraphError, match="'w' is not an input or parameter"):
        grad(g, ["w"])
    with pytest.raises(kiln.GraphError, match="'i' is int64\\[3\\]; only float"):
        grad(g, ["i"])
    with pytest.raises(kiln.GraphError, match="has no float parameters"):
        grad(g)


def test_attention_backward_saves_only_the_log_sum_exp():
    """No [Sq, Sk] value exists in the gradient graph of attention: probabilities are recomputed."""
    g = kiln.Graph()
    q = g.input("q", (1, 2, 7, 4), "float32")
    k = g.input("k", (1, 2, 9, 4), "float32")
    g.output("loss", g.sum(g.attention(q, k, k)))
    gg = grad(g, ["q", "k"])
    shapes = {tuple(o.shape[-2:]) for n in gg.nodes for o in n.outputs}
    assert (7, 9) not in shapes and (9, 7) not in shapes
    assert [n.op for n in gg.nodes if "attention" in n.op] == ["attention_lse", "attention_backward"]


def test_grad_graph_round_trips_through_json(net_data, tmp_path):
    params, x, t = net_data
    gg = grad(net_graph(), ["w1", "x"])
    save_graph(gg, tmp_path / "g.json")
    a, b = _run(gg, params, x=x, t=t), _run(load_graph(tmp_path / "g.json"), params, x=x, t=t)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_second_derivative_by_reverse_over_reverse():
    """grad of grad: d2/dx2 sum(tanh(x)^3 * x) elementwise, against torch double backward."""
    g = kiln.Graph()
    x = g.input("x", (5,), "float64")
    t = g.tanh(x)
    g.output("loss", g.sum(g.mul(g.mul(g.mul(t, t), t), x)))
    g1 = grad(g, ["x"])
    g1.output("gsum", g1.sum(g1.outputs[grad_name("x")]))
    with pytest.raises(kiln.GraphError, match="already has an output 'grad/x'; pass keep_outputs=False"):
        grad(g1, ["x"], "gsum")
    g2 = grad(g1, ["x"], "gsum", keep_outputs=False)
    xv = np.linspace(-1.5, 1.5, 5)
    got = _run(g2, x=xv)[grad_name("x")]
    tx = torch.from_numpy(xv).requires_grad_(True)
    (gx,) = torch.autograd.grad((torch.tanh(tx) ** 3 * tx).sum(), [tx], create_graph=True)
    (want,) = torch.autograd.grad(gx.sum(), [tx])
    _close(got, want)


def test_jvp_of_a_network_matches_torch_func(net_data, rng):
    params, x, t = net_data
    names = ["w1", "b1", "w2", "x"]
    tangents = {n: rng.standard_normal(np.shape(params.get(n, x))) for n in names}
    res = _run(jvp(net_graph(), names), params, x=x, t=t, **{tangent_name(n): v for n, v in tangents.items()})
    tt = {k: torch.from_numpy(v) for k, v in params.items()}
    primal, tan = torch.func.jvp(lambda w1, b1, w2, xx: net_torch(xx, torch.from_numpy(t), w1, b1, w2),
                                 (tt["w1"], tt["b1"], tt["w2"], torch.from_numpy(x)),
                                 tuple(torch.from_numpy(tangents[n]) for n in names))
    _close(res["loss"], primal)
    _close(res[tangent_name("loss")], tan)
    assert res[tangent_name("logits")].shape == (4, 3)


def test_hvp_of_a_network_matches_torch_func(net_data, rng):
    params, x, t = net_data
    names = ["w1", "b1", "w2"]
    vec = {n: rng.standard_normal(params[n].shape) for n in names}
    res = _run(hvp(net_graph(), names), params, x=x, t=t, **{tangent_name(n): v for n, v in vec.items()})
    tt = {k: torch.from_numpy(v) for k, v in params.items()}

    def f(w1, b1, w2):
        return net_torch(torch.from_numpy(x), torch.from_numpy(t), w1, b1, w2)
    # forward-over-reverse in torch as well
    _, want = torch.func.jvp(torch.func.grad(f, argnums=(0, 1, 2)), (tt["w1"], tt["b1"], tt["w2"]),
                             tuple(torch.from_numpy(vec[n]) for n in names))
    for n, w in zip(names, want):
        _close(res[hvp_name(n)], w, 1e-9)
    _close(res[grad_name("w1")], torch.func.grad(f)(tt["w1"], tt["b1"], tt["w2"]))


def test_jvp_errors_name_the_problem():
    g = net_graph()
    with pytest.raises(kiln.GraphError, match="'nope' is not an output"):
        jvp(g, ["x"], ["nope"])
    with pytest.raises(kiln.GraphError, match="'q' is not an input or parameter"):
        jvp(g, ["q"])
