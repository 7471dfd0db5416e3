"""Differential testing: random graphs give the same outputs optimized, unoptimized and node by node.

Hypothesis builds graphs from a menu of primitive steps, many of them the patterns the
rewrite rules look for (silu, gelu, softmax, norms, linears with siblings, attention),
mixed at random so rules interact. Every graph runs through kiln.compile with and
without optimization (plan + arena executor) and is compared with a node-by-node
reference run of the graph as written.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opt_testing import random_feeds, reference_run, run_compiled

from kiln.ir import Graph

B, S, D = 2, 3, 8


class Builder:
    def __init__(self):
        self.g = Graph("random")
        self.n = 0

    def param(self, shape, pos=False):
        self.n += 1
        return self.g.parameter(f"p{self.n}{'_pos' if pos else ''}", shape)

    def linear(self, x):
        return self.g.matmul(x, self.g.transpose(self.param((D, D)), perm=[1, 0]))

    def heads(self, x):
        return self.g.transpose(self.g.reshape(x, shape=[B, S, 2, D // 2]), perm=[0, 2, 1, 3])

    def merge(self, x):
        return self.g.reshape(self.g.transpose(x, perm=[0, 2, 1, 3]), shape=[B, S, D])


def _softmax(g, s):
    e = g.exp(s - g.max(s, axes=[-1], keepdims=True))
    return e / g.sum(e, axes=[-1], keepdims=True)


def _attention(b, x, y):
    g = b.g
    q, k, v = b.heads(b.linear(x)), b.heads(b.linear(y)), b.heads(y)
    s = g.matmul(q, g.transpose(k, perm=[0, 1, 3, 2])) * (D // 2) ** -0.5
    return b.merge(g.matmul(_softmax(g, s), v))


def _rms(b, x):
    g = b.g
    return b.param((D,)) * (x * g.rsqrt(g.mean(x * x, axes=[-1], keepdims=True) + 1e-5))


def _ln(b, x):
    g = b.g
    d = x - g.mean(x, axes=[-1], keepdims=True)
    return d * g.rsqrt(g.mean(d * d, axes=[-1], keepdims=True) + 1e-5) * b.param((D,)) + b.param((D,))


def _gelu_tanh(g, x):
    return 0.5 * x * (1.0 + g.tanh((2.0 / np.pi) ** 0.5 * (x + 0.044715 * x * (x * x))))


def _gelu_erf(g, x):
    return 0.5 * x * (1.0 + g.erf(x * 2.0 ** -0.5))


def _rope_like(g, x):
    x1 = g.slice(x, axes=[-1], starts=[0], ends=[D // 2])
    x2 = g.slice(x, axes=[-1], starts=[D // 2], ends=[D])
    return g.concat([-x2, x1], axis=-1)


STEPS = {
    "add": lambda b, x, y: x + y,
    "sub": lambda b, x, y: x - y,
    "mul": lambda b, x, y: x * y,
    "bias": lambda b, x, y: x + b.param((D,)),
    "mul_one": lambda b, x, y: x * 1.0,
    "add_zero": lambda b, x, y: 0.0 + x,
    "tanh": lambda b, x, y: b.g.tanh(x),
    "relu": lambda b, x, y: b.g.relu(x),
    "neg": lambda b, x, y: -x,
    "silu": lambda b, x, y: x * b.g.sigmoid(x),
    "swiglu": lambda b, x, y: b.g.sigmoid(x) * x * y,
    "gelu_erf": lambda b, x, y: _gelu_erf(b.g, x),
    "gelu_tanh": lambda b, x, y: _gelu_tanh(b.g, x),
    "softmax": lambda b, x, y: _softmax(b.g, x),
    "rms_norm": lambda b, x, y: _rms(b, x),
    "layer_norm": lambda b, x, y: _ln(b, x),
    "linear": lambda b, x, y: b.linear(x),
    "linear_bias_act": lambda b, x, y: b.g.relu(b.linear(x) + b.param((D,))),
    "linear_residual": lambda b, x, y: y + b.linear(x),
    "siblings": lambda b, x, y: b.linear(x) * b.g.sigmoid(b.linear(x)) * b.linear(x),
    "norm_then_linear": lambda b, x, y: b.linear(_rms(b, x)),
    "attention": _attention,
    "transposes": lambda b, x, y: b.g.transpose(b.g.transpose(x, perm=[1, 0, 2]), perm=[1, 0, 2]),
    "reshapes": lambda b, x, y: b.g.reshape(b.g.reshape(x, shape=[B * S, D]), shape=[B, S, D]),
    "rope_like": lambda b, x, y: _rope_like(b.g, x),
    "exp_tanh": lambda b, x, y: b.g.exp(b.g.tanh(x)),
}


@st.composite
def random_graphs(draw):
    b = Builder()
    pool = [b.g.input("x0", (B, S, D)), b.g.input("x1", (B, S, D))]
    for _ in range(draw(st.integers(1, 8))):
        step = draw(st.sampled_from(sorted(STEPS)))
        x, y = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
        pool.append(STEPS[step](b, x, y))
    b.g.output("out", pool[-1])
    extra = draw(st.integers(0, len(pool) - 2))
    if pool[extra] is not pool[-1]:
        b.g.output("extra", pool[extra])
    return b.g


def _close(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_graphs(), seed=st.integers(0, 2**16))
def test_optimized_and_unoptimized_match_reference(graph, seed):
    feeds = random_feeds(graph, seed)
    want = reference_run(graph, feeds)
    optimized, cg = run_compiled(graph, feeds, optimize=True)
    assert not cg.report.optimizer_fell_back, cg.report.optimizer_reason
    unoptimized, _ = run_compiled(graph, feeds, optimize=False)
    for name in want:
        _close(optimized[name], want[name])
        _close(unoptimized[name], want[name])
