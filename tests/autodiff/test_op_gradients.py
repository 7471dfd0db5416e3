"""Every differentiable op's VJP, JVP and HVP against torch autograd / torch.func.

float64 to a relative error of 1e-6 (the error is max |kiln - torch| / max |torch|), float32 to 1e-4.
The float64 gradient graphs also go through the e-graph optimizer; the other passes skip it
for time (it is covered there and by the whole-model tests).
"""

import numpy as np
import pytest

from autodiff_cases import CASES
from op_harness import (flat_named, float_names, kiln_grads, kiln_hvp, kiln_jvp, output_weights, rel_err,
                        sample_case, torch_grads, torch_hvp, torch_jvp)

IDS = [c.name for c in CASES]
TOL = {"float64": 1e-6, "float32": 1e-4}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vjp_matches_torch(case, dtype):
    rng, inputs = sample_case(case, 0, dtype)
    weights = output_weights(case, inputs, rng)
    got = kiln_grads(case, inputs, weights, optimize=dtype == "float64")
    want = torch_grads(case, inputs, weights)
    assert len(got) == len(want) == len(float_names(inputs))
    for name, a, b in zip(float_names(inputs), got, want):
        assert a.dtype == b.dtype, f"grad of {name}: dtype {a.dtype}, torch {b.dtype}"
        assert rel_err(a, b) <= TOL[dtype], f"grad of {name}: rel err {rel_err(a, b):.2e}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jvp_matches_torch_func(case):
    rng, inputs = sample_case(case, 1)
    names = float_names(inputs)
    tangents = [rng.standard_normal(a.shape).astype(a.dtype) for n, a in flat_named(inputs) if n in names]
    got, want = kiln_jvp(case, inputs, tangents), torch_jvp(case, inputs, tangents)
    assert len(got) == len(want)
    for j, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= 1e-6, f"tangent of output {j}: rel err {rel_err(a, b):.2e}"


@pytest.mark.parametrize("case", [c for c in CASES if c.hvp], ids=[c.name for c in CASES if c.hvp])
def test_hvp_matches_torch(case):
    rng, inputs = sample_case(case, 2)
    weights = output_weights(case, inputs, rng)
    names = float_names(inputs)
    vectors = [rng.standard_normal(a.shape).astype(a.dtype) for n, a in flat_named(inputs) if n in names]
    got, want = kiln_hvp(case, inputs, weights, vectors), torch_hvp(case, inputs, weights, vectors)
    for name, a, b in zip(names, got, want):
        err = rel_err(a, b) if np.abs(b).max(initial=0) > 0 else float(np.abs(a).max(initial=0))
        assert err <= 1e-6, f"hvp of {name}: rel err {err:.2e}"
