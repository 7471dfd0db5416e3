"""Data parallelism as a graph transform: gradients averaged over the ranks inside the step.

Each rank computes the gradients of the mean loss over its shard of the global batch; their
mean over equal shards is the full batch's gradient, so every rank applies the same update
and the parameters stay identical without being sent anywhere. Gradients are flattened into
buckets (`BUCKET_BYTES` each, per dtype, in the order backward produces them: the last layer's
first), so a large model makes a few large all_reduces rather than one per tensor, and a
bucket's all_reduce depends only on the gradients in it. The collectives are ordinary ops of
the step graph, which the scheduler and memory planner see like any other; they run
synchronously today (gloo on the CPU; NCCL untested), so nothing overlaps the backward yet.
"""

from __future__ import annotations

from kiln.ir import Graph, Value

BUCKET_BYTES = 25 << 20


def average_gradients(g: Graph, grads: dict[str, Value], world: int,
                      bucket_bytes: int = BUCKET_BYTES) -> dict[str, Value]:
    """Each gradient replaced by its mean over the `world` ranks (bucketed all_reduces)."""
    if world == 1:
        return dict(grads)
    out: dict[str, Value] = {}
    buckets: list[list[str]] = []
    open_by_dtype: dict[str, tuple[list[str], int]] = {}
    for name in sorted(grads, key=lambda n: grads[n].id):     # creation order = backward's order
        d = grads[name]
        nbytes = _numel(d) * d.dtype.itemsize
        names, used = open_by_dtype.get(d.dtype.name, (None, 0))
        if names is None or used + nbytes > bucket_bytes:
            names, used = [], 0
            buckets.append(names)
        names.append(name)
        open_by_dtype[d.dtype.name] = (names, used + nbytes)
    for names in buckets:
        flat = [g.reshape(grads[n], shape=[-1]) for n in names]
        sizes = [_numel(grads[n]) for n in names]
        joined = flat[0] if len(flat) == 1 else g.concat(*flat, axis=0)
        mean = g.all_reduce(joined, world=world, reduce="mean")
        parts = [mean] if len(names) == 1 else list(g.split(mean, sizes=sizes, axis=0))
        for n, p in zip(names, parts):
            out[n] = g.reshape(p, shape=list(grads[n].shape))
    return {n: out[n] for n in grads}


def mean_over_ranks(g: Graph, x: Value, world: int) -> Value:
    """A scalar (the loss, a metric) averaged over the ranks, for reporting."""
    return x if world == 1 else g.all_reduce(x, world=world, reduce="mean")


def _numel(v: Value) -> int:
    n = 1
    for s in v.shape:
        n *= s
    return n
