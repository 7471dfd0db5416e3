"""matmul (batched, broadcast batch dims, transpose flags) and linear against torch."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from harness import FLOATS, INTS, check, rand

TESTED_OPS = {"matmul", "linear"}

MATMUL_SHAPES = [  # (a, b) before transposes: a [..., M, K], b [..., K, N]
    ((3, 4), (4, 5)), ((1, 6), (6, 1)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 2)),
    ((5, 4), (3, 4, 2)), ((2, 1, 3, 4), (1, 3, 4, 5)), ((1, 1, 7), (1, 7, 1)),
]


def _t(shape, flag):
    return shape[:-2] + (shape[-1], shape[-2]) if flag else shape


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shapes", MATMUL_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_matmul(dtype, shapes, ta, tb, rng):
    if dtype == "uint8":  # products stay below 256, so no wraparound to compare
        a, b = rand(rng, _t(shapes[0], ta), dtype, 0, 3), rand(rng, _t(shapes[1], tb), dtype, 0, 3)
    else:
        a, b = rand(rng, _t(shapes[0], ta), dtype), rand(rng, _t(shapes[1], tb), dtype)

    def ref(x, y):
        return torch.matmul(x.mT if ta else x, y.mT if tb else y)
    check("matmul", [a, b], ref, transpose_a=ta, transpose_b=tb)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matmul_half_accumulates_in_float32(dtype, rng):
    """A long contraction: rounding every partial sum to half precision would miss the tolerance."""
    a, b = rand(rng, (4, 2048), dtype), rand(rng, (2048, 3), dtype)
    check("matmul", [a, b], torch.matmul)


def test_matmul_errors_name_shapes_and_flags():
    g = kiln.Graph()
    a, b = g.input("a", (3, 4), "float32"), g.input("b", (5, 6), "float32")
    with pytest.raises(kiln.GraphError, match=r"\(3, 4\).*K=4.*\(5, 6\).*K=5"):
        g.matmul(a, b)
    with pytest.raises(kiln.GraphError, match="transpose_b=True"):
        g.matmul(a, b, transpose_b=True)
    with pytest.raises(kiln.GraphError, match="rank >= 2"):
        g.matmul(g.input("v", (4,), "float32"), g.input("w", (4, 2), "float32"))
    with pytest.raises(kiln.GraphError, match="float16"):
        g.matmul(a, g.input("h", (4, 2), "float16"))
    with pytest.raises(kiln.GraphError, match="do not broadcast"):
        g.matmul(g.input("p", (2, 3, 4), "float32"), g.input("q", (3, 4, 2), "float32"))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("xshape", [(5,), (3, 5), (2, 1, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear(dtype, xshape, bias, rng):
    x, w = rand(rng, xshape, dtype), rand(rng, (6, 5), dtype)
    b = rand(rng, (6,), dtype) if bias else None
    check("linear", [x, w, b], F.linear)


def test_linear_errors_name_features_and_bias():
    g = kiln.Graph()
    x, w = g.input("x", (2, 5), "float32"), g.input("w", (6, 4), "float32")
    with pytest.raises(kiln.GraphError, match="5 features.*expects 4"):
        g.linear(x, w)
    w2 = g.input("w2", (6, 5), "float32")
    with pytest.raises(kiln.GraphError, match=r"bias must have shape \(6,\)"):
        g.linear(x, w2, g.input("b", (5,), "float32"))
    with pytest.raises(kiln.GraphError, match="'bias' has dtype float64"):
        g.linear(x, w2, g.input("b64", (6,), "float64"))
    with pytest.raises(kiln.GraphError, match="float"):
        g.linear(g.input("i", (2, 5), "int32"), g.input("wi", (6, 5), "int32"))
