"""fused_linear (the optimizer's matmul with norm prologue and activation/residual epilogue) against torch."""

import pytest
import torch.nn.functional as F
from harness import FLOATS, check, rand

TESTED_OPS = {"fused_linear"}

ACTS = {
    "none": lambda y: y, "silu": F.silu, "relu": F.relu, "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "swiglu": lambda y: F.silu(y[..., : y.shape[-1] // 2]) * y[..., y.shape[-1] // 2:],
    "geglu": lambda y: F.gelu(y[..., : y.shape[-1] // 2]) * y[..., y.shape[-1] // 2:],
    "geglu_tanh": lambda y: F.gelu(y[..., : y.shape[-1] // 2], approximate="tanh") * y[..., y.shape[-1] // 2:],
}


@pytest.mark.parametrize("norm", ["none", "rms_norm", "rms_norm_unit", "layer_norm"])
@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("dtype", FLOATS)
def test_fused_linear(dtype, activation, norm, rng):
    k, n = 8, 6
    x, w, b = rand(rng, (2, 3, k), dtype), rand(rng, (n, k), dtype), rand(rng, (n,), dtype)
    out_n = n // 2 if activation in ("swiglu", "geglu", "geglu_tanh") else n
    r = rand(rng, (3, out_n), dtype)  # broadcasts over the batch axis
    nw = rand(rng, (k,), dtype) if norm != "none" else None
    nb = rand(rng, (k,), dtype) if norm == "layer_norm" else None
    unit = norm == "rms_norm_unit"

    def ref(tx, tw, tb, tr, tnw, tnb):
        if norm.startswith("rms_norm"):
            tx = F.rms_norm(tx, (k,), 1.0 + tnw if unit else tnw, eps=1e-5)
        elif norm == "layer_norm":
            tx = F.layer_norm(tx, (k,), tnw, tnb, eps=1e-5)
        return ACTS[activation](F.linear(tx, tw, tb)) + tr
    check("fused_linear", [x, w, b, r, nw, nb], ref, activation=activation,
          norm="rms_norm" if unit else norm, eps=1e-5, add_unit_offset=unit)


@pytest.mark.parametrize("dtype", FLOATS)
def test_fused_linear_without_bias_or_residual(dtype, rng):
    x, w = rand(rng, (4, 5), dtype), rand(rng, (7, 5), dtype)
    check("fused_linear", [x, w], lambda tx, tw: F.silu(F.linear(tx, tw)), activation="silu")


def test_fused_linear_errors_name_the_problem():
    import kiln
    g = kiln.Graph()
    x, w = g.input("x", (2, 4)), g.parameter("w", (5, 4))
    with pytest.raises(kiln.GraphError, match="gated activation 'swiglu' needs an even number"):
        g.fused_linear(x, w, activation="swiglu")
    with pytest.raises(kiln.GraphError, match="norm_weight/norm_bias given but norm is 'none'"):
        g.fused_linear(x, w, None, None, g.parameter("nw", (4,)))
    with pytest.raises(kiln.GraphError, match="activation 'tanh' is not one of"):
        g.fused_linear(x, w, activation="tanh")
