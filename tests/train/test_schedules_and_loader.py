"""LR schedules against HF transformers' schedulers; the loader's batching and determinism."""

import numpy as np
import pytest
import torch

from kiln.train import ArrayLoader, constant, cosine, linear_warmup


def _hf_rates(make, steps):
    """Learning rates transformers' scheduler gives at optimizer steps 0..steps-1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched = make(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("kind", ["constant", "warmup", "warmup_linear", "cosine", "cosine_warmup", "cosine_min"])
def test_schedules_match_transformers(kind):
    import transformers as tf
    n = 40
    ours, theirs = {
        "constant": (constant(0.5), lambda o: tf.get_constant_schedule(o)),
        "warmup": (linear_warmup(0.5, 7), lambda o: tf.get_constant_schedule_with_warmup(o, 7)),
        "warmup_linear": (linear_warmup(0.5, 5, 30), lambda o: tf.get_linear_schedule_with_warmup(o, 5, 30)),
        "cosine": (cosine(0.5, 30), lambda o: tf.get_cosine_schedule_with_warmup(o, 0, 30)),
        "cosine_warmup": (cosine(0.5, 30, 6), lambda o: tf.get_cosine_schedule_with_warmup(o, 6, 30)),
        "cosine_min": (cosine(0.5, 30, 6, min_lr=0.05),
                       lambda o: tf.get_cosine_with_min_lr_schedule_with_warmup(o, 6, 30, min_lr=0.05)),
    }[kind]
    want = _hf_rates(theirs, n)
    got = [ours(s) for s in range(n)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"total_steps \(5\) must exceed warmup_steps \(5\)"):
        cosine(0.1, 5, 5)
    with pytest.raises(ValueError, match="min_lr must be in"):
        cosine(0.1, 10, min_lr=0.2)


def test_loader_batches_cover_each_epoch_once_and_reshuffle():
    x = np.arange(23)[:, None] * np.ones((1, 2))
    y = np.arange(23)
    loader = ArrayLoader({"x": x, "y": y}, 5, seed=4)
    assert len(loader) == 4  # drop_last: 3 rows left out per epoch
    e0 = list(loader.epoch(0))
    assert all(b["x"].shape == (5, 2) and np.array_equal(b["x"][:, 0], b["y"]) for b in e0)
    seen = np.concatenate([b["y"] for b in e0])
    assert len(set(seen)) == 20
    e1 = np.concatenate([b["y"] for b in loader.epoch(1)])
    assert not np.array_equal(seen, e1)
    # deterministic per (seed, epoch), and resumable from any batch
    assert np.array_equal(seen, np.concatenate([b["y"] for b in ArrayLoader({"x": x, "y": y}, 5, seed=4).epoch(0)]))
    tail = np.concatenate([b["y"] for b in loader.epoch(0, start=2)])
    assert np.array_equal(tail, seen[10:])


def test_loader_without_shuffle_and_with_last_partial_batch():
    loader = ArrayLoader({"a": np.arange(7)}, 3, shuffle=False, drop_last=False)
    assert [b["a"].tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6]]


def test_loader_errors():
    with pytest.raises(ValueError, match="share their first dimension"):
        ArrayLoader({"a": np.zeros(3), "b": np.zeros(4)}, 2)
    with pytest.raises(ValueError, match="batch_size 9 exceeds the 4 rows"):
        ArrayLoader({"a": np.zeros(4)}, 9)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ArrayLoader({"a": np.zeros(4)}, 0)
