"""cache_write against torch's index_copy, and as a state updated in place across runs."""

import numpy as np
import pytest
import torch

import kiln

from harness import FLOATS, INTS, check, rand

TESTED_OPS = {"cache_write"}


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("cache_shape,new_rows,axis,pos", [
    ((2, 3, 8, 4), 1, 2, 5), ((2, 3, 8, 4), 3, 2, 0), ((2, 3, 8, 4), 3, -2, 5), ((2, 8), 1, 1, 7),
    ((6, 5), 6, 0, 0)])
def test_cache_write_matches_torch_index_copy(dtype, cache_shape, new_rows, axis, pos):
    rng = np.random.default_rng(0)
    new_shape = list(cache_shape)
    new_shape[axis] = new_rows
    cache, new = rand(rng, cache_shape, dtype), rand(rng, new_shape, dtype)

    def ref(c, n, p):
        return c.index_copy(axis % c.ndim, torch.arange(int(p[0]), int(p[0]) + new_rows), n)

    check("cache_write", [cache, new, np.array([pos], np.int64)], ref, axis=axis)


def test_cache_write_rejects_a_position_out_of_range():
    cache, new = np.zeros((1, 1, 4, 2), np.float32), np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(IndexError, match="position 3 with 2 new rows is out of range"):
        check("cache_write", [cache, new, np.array([3], np.int64)], lambda c, n, p: c)


def test_cache_write_type_rule_names_the_mismatch():
    g = kiln.Graph()
    c = g.input("c", (1, 2, 4, 8))
    with pytest.raises(kiln.GraphError, match="must match cache"):
        g.cache_write(c, g.input("n", (1, 3, 1, 8)), g.input("p", (1,), "int64"))
    with pytest.raises(kiln.GraphError, match="position must be int64 of shape"):
        g.cache_write(c, g.input("n2", (1, 2, 1, 8)), g.input("p2", (2,), "int64"))
