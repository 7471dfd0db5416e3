"""Data parallelism's gradient buckets (kiln.train.data_parallel), as graph structure: two-rank
numerics are in tests/distributed."""

from kiln.ir import Graph
from kiln.train.data_parallel import average_gradients


def _grads():
    g = Graph()
    late = g.input("late", (4, 4))        # created first: backward produced it first
    mid = g.input("mid", (4,))
    early = g.input("early", (8, 2))
    half = g.input("half", (3,), "bfloat16")
    return g, {"early": early, "mid": mid, "late": late, "half": half}


def test_buckets_follow_backward_order_dtype_and_size():
    g, grads = _grads()
    out = average_gradients(g, grads, world=2, bucket_bytes=80)
    reduces = [n for n in g.nodes if n.op == "all_reduce"]
    sizes = [n.inputs[0].shape[0] for n in reduces]
    assert sizes == [20, 16, 3]         # [late, mid] (16 + 4 floats = 80 bytes), [early], [half] (its own dtype)
    assert all(n.attrs == {"world": 2, "reduce": "mean"} for n in reduces)
    assert list(out) == list(grads) and all(out[k].shape == grads[k].shape for k in grads)


def test_one_rank_changes_nothing():
    g, grads = _grads()
    assert average_gradients(g, grads, world=1) == grads
    assert not [n for n in g.nodes if n.op == "all_reduce"]
