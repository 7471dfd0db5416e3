"""Collectives with one rank (their single-process meaning) against torch; tests/distributed runs
them on two gloo ranks started by torchrun."""

import numpy as np
import pytest

from kiln.ir import Graph, GraphError

from harness import FLOATS, check, rand

TESTED_OPS = {"all_reduce", "all_gather", "reduce_scatter"}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op,attrs", [("all_reduce", {"reduce": "sum"}), ("all_reduce", {"reduce": "mean"}),
                                      ("all_gather", {"axis": 1}), ("reduce_scatter", {"axis": -1})])
def test_one_rank_collectives_are_the_identity(dtype, op, attrs):
    x = rand(np.random.default_rng(0), (3, 4), dtype)
    check(op, [x], lambda t: t.clone(), world=1, **attrs)


def test_collective_shapes_and_bad_attributes():
    g = Graph()
    x = g.input("x", (4, 6))
    assert g.all_gather(x, world=3, axis=1).shape == (4, 18)
    assert g.reduce_scatter(x, world=2, axis=0).shape == (2, 6)
    with pytest.raises(GraphError, match="does not split into 4 equal shards"):
        g.reduce_scatter(x, world=4, axis=1)
    with pytest.raises(GraphError, match="world must be a positive int"):
        g.all_reduce(x, world=0)
    with pytest.raises(GraphError, match="reduce must be one of"):
        g.all_reduce(x, world=2, reduce="max")
    with pytest.raises(GraphError, match="must be a float tensor"):
        g.all_reduce(g.input("i", (2,), "int64"), world=2)
