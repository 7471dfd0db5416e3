"""Layout / gather archetype: views, copies, rope, embedding, concat, KV-cache write, fallbacks."""

import numpy as np
import pytest
import torch

from helpers import check, randn
from kiln.backends.triton.kernels.layout import kv_cache_write
from kiln.ir import Graph


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_on_a_transposed_view_with_partial_rotation(rng, layout):
    g = Graph()
    x = g.input("x", (2, 5, 3, 12))                      # [B, S, H, D], read through a transpose
    cos = g.input("cos", (2, 5, 4))                      # rot = 8 of 12 dims
    sin = g.input("sin", (2, 5, 4))
    g.output("y", g.rope(g.transpose(x, perm=[0, 2, 1, 3]), cos, sin, layout=layout))
    ex = check(g, {"x": randn(rng, (2, 5, 3, 12)), "cos": randn(rng, (2, 5, 4)), "sin": randn(rng, (2, 5, 4))})
    assert [l.label for l in ex.program.launches] == ["rope"]


def test_views_copies_concat_and_embedding(rng):
    g = Graph()
    x = g.input("x", (4, 6))
    ids = g.input("ids", (2, 3), "int64")
    table = g.parameter("table", (10, 6), "bfloat16")
    g.output("emb", g.embedding(ids, table))
    t = g.transpose(x, perm=[1, 0])
    g.output("reshaped_t", g.reshape(t, shape=[3, 8]))                  # not a view: a copy
    g.output("cat", g.concat([x, g.slice(x, axes=[0], starts=[1], ends=[4], steps=[2]), g.exp(x)], axis=0))
    a, b = g.split(x, sizes=[2, 4], axis=1)
    g.output("split_b", b)
    g.output("bcast", g.broadcast_to(g.slice(x, axes=[0], starts=[0], ends=[1]), shape=[3, 4, 6]))
    g.output("rep", g.repeat_interleave(a, repeats=3, axis=1))
    g.output("rev", g.slice(x, axes=[1], starts=[5], ends=[0], steps=[-2]))   # torch fallback
    g.output("gather", g.gather(x, g.reshape(ids, shape=[6]), axis=1))
    ex = check(g, {"x": randn(rng, (4, 6)), "ids": rng.integers(0, 6, (2, 3))},
               {"table": randn(rng, (10, 6), "bfloat16")})
    assert set(ex.stats()["fallbacks"]) == {"slice [torch]", "gather [torch]"}


def test_embedding_rejects_out_of_range_ids(rng):
    from helpers import compiled_pair
    g = Graph()
    ids = g.input("ids", (3,), "int64")
    g.output("e", g.embedding(ids, g.parameter("w", (5, 4))))
    _, cg = compiled_pair(g)
    cg.load_params({"w": randn(rng, (5, 4))})
    with pytest.raises(IndexError, match=r"input 'ids'.*\[0, 5\)"):
        cg.run(ids=np.array([0, 5, 1]))


def test_kv_cache_write_kernel(rng):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cache = torch.zeros(2, 3, 10, 4, device=dev)
    new = torch.randn(2, 3, 2, 4, device=dev)
    kv_cache_write(cache, new, torch.tensor([1, 8], device=dev))   # per-row positions
    ref = torch.zeros(2, 3, 10, 4, device=dev)
    ref[0, :, 1:3] = new[0]
    ref[1, :, 8:10] = new[1]
    torch.testing.assert_close(cache, ref, rtol=0, atol=0)
    kv_cache_write(cache, new[:, :, :1], torch.tensor([0], device=dev))   # one position for every row
    ref[:, :, 0] = new[:, :, 0]
    torch.testing.assert_close(cache, ref, rtol=0, atol=0)


def test_fallback_ops_match_numpy(rng):
    g = Graph()
    x = g.input("x", (2, 3, 5))
    img = g.input("img", (1, 2, 6, 6))
    w = g.parameter("w", (4, 2, 3, 3))
    idx = g.input("idx", (2, 3, 2), "int64")
    g.output("pad", g.pad(x, pads=[[0, 0], [1, 2], [0, 1]], value=1.5))
    g.output("take", g.take_along_axis(x, idx, axis=2))
    g.output("onehot", g.one_hot(g.reshape(idx, shape=[12]), num_classes=5))
    g.output("conv", g.conv2d(img, w, None, stride=2, padding=[[1, 0], [0, 1]]))
    g.output("gn", g.group_norm(img, None, None, num_groups=2))
    g.output("scatter", g.scatter_add(idx, g.slice(x, axes=[2], starts=[0], ends=[2]), axis=2, size=5))
    g.output("pool", g.max_pool2d(img, kernel_size=2))               # host fallback
    ex = check(g, {"x": randn(rng, (2, 3, 5)), "img": randn(rng, (1, 2, 6, 6)),
                   "idx": rng.integers(0, 5, (2, 3, 2))}, {"w": randn(rng, (4, 2, 3, 3))})
    fb = ex.stats()["fallbacks"]
    assert fb["max_pool2d [host]"] == 1 and fb["conv2d [torch]"] == 1
    assert not ex.cuda_graph   # a host round trip cannot be captured


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_concat_inputs_computed_into_their_slices(rng, dtype):
    """A two-output pointwise chain and a reshape's copy write straight into their slices of a
    concat (no copy launch for them); an input read twice and a graph input are still copied."""
    g = Graph()
    x, z = g.input("x", (2, 4, 6), dtype), g.input("z", (2, 4, 6), dtype)
    s = g.sigmoid(x)
    gate, up = g.mul(x, s), g.mul(z, s)                 # one chain, two outputs
    moved = g.reshape(g.transpose(g.reshape(z, shape=[2, 4, 2, 3]), perm=[0, 1, 3, 2]), shape=[2, 4, 6])
    t = g.tanh(z)
    cat = g.concat([gate, moved, up, t, z], axis=-1)
    g.output("y", g.mul(cat, cat))
    g.output("t", g.sum(t, axes=[-1]))
    ex = check(g, {"x": randn(rng, (2, 4, 6), dtype), "z": randn(rng, (2, 4, 6), dtype)})
    assert len(ex.plan.memory.slices) == 3
    assert [launch.label for launch in ex.program.launches].count("concat") == 2


def test_q_and_k_ropes_by_one_table_are_one_launch(rng):
    """rope(q) and rope(k) by the same tables, with a copy of rope(k) in between that the Plan
    moves after rope(q): one launch over both, equal to the NumPy backend."""
    g = Graph()
    q, k = g.input("q", (2, 5, 4, 8)), g.input("k", (2, 5, 2, 8))
    cos, sin = g.input("cos", (1, 5, 3)), g.input("sin", (1, 5, 3))
    rk = g.rope(g.transpose(k, perm=[0, 2, 1, 3]), cos, sin)
    g.output("k_merged", g.reshape(g.transpose(rk, perm=[0, 2, 1, 3]), shape=[2, 5, 16]))   # a copy
    g.output("q_rot", g.rope(g.transpose(q, perm=[0, 2, 1, 3]), cos, sin))
    feeds = {"q": randn(rng, (2, 5, 4, 8)), "k": randn(rng, (2, 5, 2, 8)), "cos": randn(rng, (1, 5, 3)),
             "sin": randn(rng, (1, 5, 3))}
    ex = check(g, feeds)
    labels = [launch.label for launch in ex.program.launches]
    assert labels.count("rope [2 tensors]") == 1 and "rope" not in labels, labels
