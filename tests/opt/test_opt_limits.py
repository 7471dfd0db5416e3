"""The optimizer stays bounded, falls back gracefully, treats unknown ops as opaque, and loads egglog lazily."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from opt_testing import random_feeds, reference_run, run_compiled

import kiln
from kiln.api import reference_evaluate
from kiln.ir import Graph
from kiln.opt import Limits, OptimizationWarning, optimize


def ops(g) -> Counter:
    return Counter(n.op for n in g.compute_nodes())


def silu_graph():
    g = Graph("silu")
    x = g.input("x", (4, 8))
    y = x * g.sigmoid(x)
    for _ in range(6):
        y = y * g.sigmoid(y) + x
    g.output("y", y)
    return g


@pytest.mark.parametrize("limits, reason", [
    (Limits(max_enodes=5), "e-graph grew past 5 e-nodes"),
    (Limits(max_seconds=0.0), "saturation took longer than 0.0 s"),
])
def test_limits_fall_back_to_the_unoptimized_graph_with_a_warning(limits, reason):
    g = silu_graph()
    with pytest.warns(OptimizationWarning, match=reason):
        out, report = optimize(g, limits=limits)
    assert report.fell_back and reason in report.reason
    assert ops(out) == ops(g)  # nothing fused
    feeds = random_feeds(g)
    np.testing.assert_array_equal(reference_run(out, feeds)["y"], reference_run(g, feeds)["y"])


def test_a_failure_inside_the_optimizer_falls_back(monkeypatch):
    from kiln.opt import terms

    def broken(*args, **kwargs):
        raise RuntimeError("simulated extraction bug")
    monkeypatch.setattr(terms, "decode", broken)
    g = silu_graph()
    with pytest.warns(OptimizationWarning, match="simulated extraction bug"):
        out, report = optimize(g)
    assert report.fell_back and ops(out) == ops(g)


def test_saturation_reaches_a_fixpoint_within_the_default_limits():
    _, report = optimize(silu_graph())
    assert report.saturated and not report.fell_back and report.iterations < Limits().max_iterations


def test_unknown_ops_are_opaque_and_still_take_part_in_cse_and_fusion():
    g = Graph("opaque")
    x = g.input("x", (1, 2, 6, 6))
    w = g.parameter("w", (3, 2, 3, 3))
    a = g.conv2d(x, w, padding=1)
    b = g.conv2d(x, w, padding=1)             # same opaque node: hash-consed into one
    s = (a + b) * g.sigmoid(a + b)            # silu around opaque values
    top, bottom = g.split(s, sizes=[1, 2], axis=1)  # a multi-output op, opaque too
    g.output("y", g.clamp(top, min=-1.0) + bottom)
    out, report = optimize(g, evaluate=reference_evaluate)
    assert not report.fell_back
    c = ops(out)
    assert c["conv2d"] == 1 and c["silu"] == 1 and c["sigmoid"] == 0 and c["split"] == 1
    feeds = random_feeds(g)
    np.testing.assert_allclose(reference_run(out, feeds)["y"], reference_run(g, feeds)["y"], rtol=1e-5,
                               atol=1e-6)
    got, _ = run_compiled(g, feeds)
    np.testing.assert_allclose(got["y"], reference_run(g, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_compile_without_optimization_keeps_the_graph_as_written():
    g = silu_graph()
    cg = kiln.compile(g, optimize=False)
    assert ops(cg.graph) == ops(g) and not cg.report.optimized


def test_importing_kiln_does_not_import_egglog():
    code = "import sys, kiln; kiln.Graph(); sys.exit('egglog' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
