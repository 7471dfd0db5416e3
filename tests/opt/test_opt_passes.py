"""Classic passes: dead-code elimination, common-subexpression elimination, constant folding."""

from __future__ import annotations

from collections import Counter

import numpy as np
from opt_testing import random_feeds, reference_run

from kiln.api import reference_evaluate
from kiln.ir import Graph
from kiln.opt import optimize, simplify
from kiln.opt.passes import FOLD_MAX_ELEMENTS


def ops(g) -> Counter:
    return Counter(n.op for n in g.compute_nodes())


def test_cse_merges_identical_nodes():
    g = Graph()
    x = g.input("x", (3, 4))
    g.output("y", g.relu(x) + g.relu(x) * g.exp(x) - g.exp(x))
    out, stats = simplify(g)
    assert ops(out) == Counter(relu=1, exp=1, mul=1, add=1, sub=1)
    assert stats.merged == 2
    feeds = random_feeds(g)
    np.testing.assert_array_equal(reference_run(out, feeds)["y"], reference_run(g, feeds)["y"])


def test_dce_drops_unused_nodes_but_keeps_every_input_and_parameter():
    g = Graph()
    x = g.input("x", (3,))
    g.input("unused", (2,))
    w = g.parameter("w", (3,))
    g.exp(x * w)  # dead
    g.output("y", g.relu(x))
    out, stats = simplify(g)
    assert ops(out) == Counter(relu=1) and stats.dead == 2
    assert list(out.inputs) == ["x", "unused"] and list(out.parameters) == ["w"]


def test_constant_folding_evaluates_constant_subgraphs():
    g = Graph()
    x = g.input("x", (2, 3))
    c = g.constant(np.arange(3, dtype=np.float32))
    folded = g.exp(c) * 2.0 + g.transpose(g.reshape(c, shape=[3, 1]), perm=[1, 0])
    g.output("y", x * folded)
    out, stats = simplify(g, evaluate=reference_evaluate)
    assert ops(out) == Counter(mul=1) and stats.folded == 5
    feeds = random_feeds(g)
    np.testing.assert_allclose(reference_run(out, feeds)["y"], reference_run(g, feeds)["y"], rtol=1e-6)


def test_constant_folding_never_materializes_huge_constants():
    g = Graph()
    x = g.input("x", (2, FOLD_MAX_ELEMENTS))
    big = g.broadcast_to(g.scalar(2.0), shape=[2, FOLD_MAX_ELEMENTS])
    g.output("y", x * big)
    out, stats = simplify(g, evaluate=reference_evaluate)
    assert stats.folded == 0 and ops(out)["broadcast_to"] == 1


def test_constant_folding_leaves_failing_ops_to_run_time():
    g = Graph()
    x = g.input("x", (2, 3))
    table = g.constant(np.ones((4, 3), np.float32))
    bad = g.gather(table, g.constant(np.array([7])), axis=0)  # out of range: raises when run
    g.output("y", x + bad)
    out, stats = simplify(g, evaluate=reference_evaluate)
    assert stats.folded == 0 and ops(out)["gather"] == 1


def test_optimizer_reports_classic_pass_counts():
    g = Graph()
    x = g.input("x", (2, 3))
    g.exp(x)  # dead
    g.output("y", g.relu(x) + g.relu(x) + g.exp(g.constant(np.zeros((1, 3), np.float32))))
    out, report = optimize(g, evaluate=reference_evaluate)
    assert (report.dead, report.merged, report.folded) == (1, 1, 1)
    assert report.nodes_before == 6 and report.nodes_after == ops(out).total() == 3
