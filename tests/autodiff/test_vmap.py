"""vmap: every op case batched (first input only, and all inputs) against a loop of the torch
reference over the batch; and whole small functions against torch.func.vmap."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.autodiff import vmap

from autodiff_cases import CASES, inputs_for
from op_harness import as_tuple, flat_named, op_graph

B = 3
VMAP_CASES = [c for c in CASES if c.vmap]


def _batched_inputs(case, rng, which):
    """Per-example inputs for B examples; inputs not in `which` are shared (sampled once)."""
    examples = [inputs_for(case, rng) for _ in range(B)]
    names = [n for n, _ in flat_named(examples[0])]
    chosen = set(names) if which == "all" else {names[0]}
    flat = [dict(flat_named(e)) for e in examples]
    return examples, chosen, flat


def _restructure(template, values):
    """An input list shaped like template, taking arrays from `values` by name."""
    out = []
    for i, x in enumerate(template):
        if isinstance(x, list):
            out.append([values[f"in{i}_{j}"] for j in range(len(x))])
        else:
            out.append(None if x is None else values[f"in{i}"])
    return out


@pytest.mark.parametrize("which", ["first", "all"])
@pytest.mark.parametrize("case", VMAP_CASES, ids=[c.name for c in VMAP_CASES])
def test_vmap_matches_per_example_loop(case, which):
    rng = np.random.default_rng(3)
    examples, chosen, flat = _batched_inputs(case, rng, which)
    shared = flat[0]
    per_example = [{n: (f[n] if n in chosen else shared[n]) for n in shared} for f in flat]
    g, outs = op_graph(case, examples[0])
    feeds = {n: (np.stack([p[n] for p in per_example]) if n in chosen else shared[n]) for n in shared}
    got = kiln.compile(vmap(g, sorted(chosen), B), optimize=False).run(**feeds)  # rules, not the optimizer

    for j in range(len(outs)):
        want = []
        for p in per_example:
            args = [None if a is None else [torch.from_numpy(np.array(t)) for t in a] if isinstance(a, list)
                    else torch.from_numpy(np.array(a)) for a in _restructure(examples[0], p)]
            want.append(as_tuple(case.ref(*args))[j].detach().numpy())
        want = np.stack(want)
        assert got[f"y{j}"].shape == want.shape
        np.testing.assert_allclose(got[f"y{j}"], want, rtol=1e-10, atol=1e-12, err_msg=f"output {j}")


# ---- whole functions against torch.func.vmap --------------------------------------------------

def _mlp_graph():
    g = kiln.Graph("mlp")
    x = g.input("x", (5,), "float64")
    w1, b1 = g.parameter("w1", (4, 5), "float64"), g.parameter("b1", (4,), "float64")
    w2 = g.parameter("w2", (3, 4), "float64")
    h = g.gelu(g.linear(x, w1, b1))
    g.output("y", g.log_softmax(g.linear(g.layer_norm(h), w2)))
    return g


def _mlp_torch(x, w1, b1, w2):
    return torch.log_softmax(F.linear(F.layer_norm(F.gelu(F.linear(x, w1, b1)), (4,)), w2), -1)


def test_vmap_mlp_over_inputs_matches_torch_func(rng):
    params = {"w1": rng.standard_normal((4, 5)), "b1": rng.standard_normal(4), "w2": rng.standard_normal((3, 4))}
    xs = rng.standard_normal((6, 5))
    cg = kiln.compile(vmap(_mlp_graph(), ["x"], 6))
    cg.load_params(params)
    got = cg.run(x=xs)["y"]
    t = {k: torch.from_numpy(v) for k, v in params.items()}
    want = torch.func.vmap(_mlp_torch, in_dims=(0, None, None, None))(torch.from_numpy(xs), t["w1"], t["b1"], t["w2"])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


def test_vmap_over_parameters_is_an_ensemble(rng):
    """Batching the weights (ensembling): linear and layer_norm with batched weights unroll."""
    w1s = rng.standard_normal((2, 4, 5))
    params = {"b1": rng.standard_normal(4), "w2": rng.standard_normal((3, 4))}
    x = rng.standard_normal(5)
    cg = kiln.compile(vmap(_mlp_graph(), ["w1", "x"], 2))
    cg.load_params({"w1": w1s, **params})
    got = cg.run(x=np.stack([x, 2 * x]))["y"]
    t = {k: torch.from_numpy(v) for k, v in params.items()}
    want = torch.func.vmap(_mlp_torch, in_dims=(0, 0, None, None))(
        torch.from_numpy(np.stack([x, 2 * x])), torch.from_numpy(w1s), t["b1"], t["w2"])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


def test_vmap_of_grad_gives_per_example_gradients(rng):
    """vmap composes with grad: per-example gradients, as torch.func.vmap(grad(f))."""
    from kiln.autodiff import grad, grad_name
    g = _mlp_graph()
    y = g.outputs["y"]
    g.output("loss", g.sum(g.mul(y, y)))
    per_example = vmap(grad(g, ["w1", "b1"], "loss"), ["x"], 4)
    params = {"w1": rng.standard_normal((4, 5)), "b1": rng.standard_normal(4), "w2": rng.standard_normal((3, 4))}
    xs = rng.standard_normal((4, 5))
    cg = kiln.compile(per_example)
    cg.load_params(params)
    got = cg.run(x=xs)
    t = {k: torch.from_numpy(v) for k, v in params.items()}

    def loss(w1, b1, x):
        return (_mlp_torch(x, w1, b1, t["w2"]) ** 2).sum()
    gw1, gb1 = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0))(
        t["w1"], t["b1"], torch.from_numpy(xs))
    np.testing.assert_allclose(got[grad_name("w1")], gw1.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[grad_name("b1")], gb1.numpy(), rtol=1e-10, atol=1e-12)
    assert got["loss"].shape == (4,)


def test_vmap_errors_name_the_problem():
    g = _mlp_graph()
    with pytest.raises(kiln.GraphError, match="'z' is not an input or parameter"):
        vmap(g, ["z"], 2)
    with pytest.raises(kiln.GraphError, match="batch_size must be a positive int"):
        vmap(g, ["x"], 0)
