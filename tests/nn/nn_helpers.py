"""Shared helpers for the kiln.nn block tests: weights drawn so bugs show, graph runs, torch conversion.

Weights are N(0, 1/fan_in) (activations keep unit scale through a stack), norm weights 1 + noise
(0 + noise for `(1 + w)` norms) and biases noise: HF's std-0.02 init makes biases and norm
weights nearly constant, which hides a missing bias or a norm applied twice.
"""

from __future__ import annotations

import numpy as np
import torch

from kiln.ir import Graph
from kiln.nn import LayerNorm, Module, RMSNorm
from kiln.runtime.compiler import compile


def init_params(module: Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    norms = {}

    def walk(m):
        if isinstance(m, (RMSNorm, LayerNorm)):
            norms[m.full_name("weight")] = 0.0 if getattr(m, "add_unit_offset", False) else 1.0
        for c in m.children():
            walk(c)

    walk(module)
    out = {}
    for name, spec in module.params().items():
        shape = spec.shape
        if len(shape) >= 2:
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        else:
            w = norms.get(name, 0.0) + 0.3 * rng.standard_normal(shape)
        out[name] = w.astype(np.float32)
    return out


def run(g: Graph, params: dict[str, np.ndarray], **inputs) -> dict[str, np.ndarray]:
    """Compile g (optimizer on) and run it once."""
    cg = compile(g)
    cg.load_params({k: params[k] for k in g.parameters})
    return cg.run(**inputs)


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def close(got, want, tol=1e-4):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
