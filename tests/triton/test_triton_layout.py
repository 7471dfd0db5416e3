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
