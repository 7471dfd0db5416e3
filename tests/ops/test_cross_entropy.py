"""softmax_cross_entropy and its fused backward against torch.nn.functional.cross_entropy.

The forward against F.cross_entropy(reduction="none") and torch.logsumexp (half logits give float32
rows, computed from the exactly upcast values); the backward op and the VJP through kiln.autodiff
against torch autograd of the same function, rounded once to the logits' dtype.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.errors import InputError
from harness import assert_matches, check, rand, run_op, to_numpy, to_torch
from kiln.autodiff import grad, grad_name

TESTED_OPS = {"softmax_cross_entropy", "softmax_cross_entropy_backward"}

FLOATS = ["float32", "float64", "bfloat16", "float16"]
CASES = [  # (logits shape, attrs)
    ((7, 11), {}),
    ((2, 3, 37), {"ignore_index": 5}),
    ((4, 300), {"label_smoothing": 0.1}),
    ((3, 2, 9), {"ignore_index": 0, "label_smoothing": 0.25}),
    ((5, 1), {}),                                  # one class: loss 0
]


def _labels(rng, shape, attrs):
    """Labels in [0, V) with about a third of the rows set to ignore_index (and the first one always)."""
    v = shape[-1]
    labels = rng.integers(0, v, shape[:-1])
    ignore = attrs.get("ignore_index", -100)
    labels[rng.random(shape[:-1]) < 0.3] = ignore
    labels.reshape(-1)[0] = ignore
    return labels


def torch_cross_entropy(x, y, ignore_index=-100, label_smoothing=0.0):
    v = x.shape[-1]
    loss = F.cross_entropy(x.reshape(-1, v), y.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none")
    return loss.reshape(y.shape), torch.logsumexp(x, -1)


def _row_dtype(dtype):
    return "float32" if dtype in ("bfloat16", "float16") else dtype


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,attrs", CASES)
def test_forward_matches_torch(shape, attrs, dtype, rng):
    x = rand(rng, shape, dtype) * 3
    y = _labels(rng, shape, attrs)
    loss, _ = check("softmax_cross_entropy", [x, y], lambda a, b: torch_cross_entropy(a, b, **attrs),
                    out_dtype=_row_dtype(dtype), **attrs)
    assert not loss[y == attrs.get("ignore_index", -100)].any()


def test_forward_is_stable_for_large_and_masked_logits():
    x = np.array([[1e4, -1e4, 3e3, 0.0], [-np.inf, 2.0, -np.inf, 1.0], [500.0, 500.0, 500.0, 500.0]], np.float32)
    y = np.array([2, 1, 3])
    check("softmax_cross_entropy", [x, y], torch_cross_entropy, out_dtype="float32")


def _torch_grad(x, y, dloss, dlse, attrs):
    xt = x.detach().clone().requires_grad_(True)
    loss, lse = torch_cross_entropy(xt, y, **attrs)
    total = (loss * dloss).sum() + ((lse * dlse).sum() if dlse is not None else 0)
    (gx,) = torch.autograd.grad(total, [xt])
    return gx


@pytest.mark.parametrize("with_dlse", [False, True])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,attrs", CASES)
def test_backward_op_matches_torch_autograd(shape, attrs, dtype, with_dlse, rng):
    x = rand(rng, shape, dtype) * 3
    y = _labels(rng, shape, attrs)
    row = _row_dtype(dtype)
    _, lse = run_op("softmax_cross_entropy", [x, y], **attrs)
    dloss = rand(rng, shape[:-1], row)
    dlse = rand(rng, shape[:-1], row) if with_dlse else None
    got = run_op("softmax_cross_entropy_backward", [x, y, lse, dloss, dlse], **attrs)
    want = _torch_grad(to_torch(x), to_torch(y), to_torch(dloss), None if dlse is None else to_torch(dlse), attrs)
    assert_matches(got, to_numpy(want, dtype), dtype, what=f"dlogits {attrs}")
    if not with_dlse:   # ignored rows get no gradient at all
        assert not got[y == attrs.get("ignore_index", -100)].astype(np.float32).any()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vjp_through_autodiff_matches_torch(dtype, rng):
    """kiln.autodiff.grad of sum(w * loss): the VJP rule emits the fused backward (no log_softmax)."""
    shape, attrs = (3, 4, 19), {"ignore_index": 7, "label_smoothing": 0.05}
    x = rand(rng, shape, dtype)
    y = _labels(rng, shape, attrs)
    w = rand(rng, shape[:-1], "float32")
    g = kiln.Graph()
    logits = g.input("x", shape, dtype)
    loss, _ = g.softmax_cross_entropy(logits, g.input("y", shape[:-1], "int64"), **attrs)
    g.output("loss", g.sum(g.mul(loss, g.input("w", shape[:-1], "float32"))))
    gg = grad(g, ["x"])
    ops = {n.op for n in gg.nodes}
    assert "softmax_cross_entropy_backward" in ops and not ops & {"log_softmax", "softmax", "scatter_add"}
    got = kiln.compile(gg).run(x=x, y=y, w=w)[grad_name("x")]
    want = _torch_grad(to_torch(x), to_torch(y), to_torch(w), None, attrs)
    assert_matches(got, to_numpy(want, dtype), dtype)


@pytest.mark.parametrize("op", sorted(TESTED_OPS))
def test_out_of_range_labels_are_an_input_error(op, rng):
    x = rand(rng, (3, 5), "float32")
    y = np.array([1, 5, -100])
    row = np.zeros(3, np.float32)
    inputs = [x, y] if op == "softmax_cross_entropy" else [x, y, row, row, None]
    with pytest.raises(InputError, match=r"label 5 at \(1,\) is outside \[0, 5\)"):
        run_op(op, inputs)
    y[1] = -1
    with pytest.raises(InputError, match=r"label -1 at \(1,\) is outside \[0, 5\)"):
        run_op(op, inputs)


def test_type_errors_name_the_problem():
    g = kiln.Graph()
    x = g.input("x", (4, 6), "bfloat16")
    y = g.input("y", (4,), "int64")
    with pytest.raises(kiln.GraphError, match="'labels' must have shape"):
        g.softmax_cross_entropy(x, g.input("y2", (4, 6), "int64"))
    with pytest.raises(kiln.GraphError, match="'labels' must be an integer tensor"):
        g.softmax_cross_entropy(x, g.input("y3", (4,), "float32"))
    with pytest.raises(kiln.GraphError, match="'logits' must be a float tensor"):
        g.softmax_cross_entropy(g.input("xi", (4, 6), "int32"), y)
    with pytest.raises(kiln.GraphError, match=r"label_smoothing must be a number in \[0, 1\]"):
        g.softmax_cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(kiln.GraphError, match="ignore_index must be an int"):
        g.softmax_cross_entropy(x, y, ignore_index=0.5)
    loss, lse = g.softmax_cross_entropy(x, y)
    assert loss.type == lse.type == kiln.ir.TensorType((4,), kiln.as_dtype("float32"))
    with pytest.raises(kiln.GraphError, match=r"lse must be float32\[4\]"):
        g.softmax_cross_entropy_backward(x, y, g.cast(lse, dtype="bfloat16"), loss)
    with pytest.raises(kiln.GraphError, match=r"dlse must be float32\[4\]"):
        g.softmax_cross_entropy_backward(x, y, lse, loss, g.input("d", (4, 1), "float32"))
