"""Checkpoints: a run stopped, saved, loaded into a fresh trainer and continued ends bit for bit
where the uninterrupted run ends (parameters, optimizer state, losses)."""

import numpy as np
import pytest

import kiln
from kiln.train import AdamW, ArrayLoader, SGD, TrainStep, Trainer, cosine, cross_entropy, load_checkpoint


def classifier(batch):
    g = kiln.Graph("clf")
    x = g.input("x", (batch, 6))
    h = g.gelu(g.linear(x, g.parameter("w1", (8, 6)), g.parameter("b1", (8,))))
    logits = g.linear(g.layer_norm(h), g.parameter("w2", (3, 8)))
    g.output("loss", cross_entropy(g, logits, g.input("y", (batch,), "int64"), label_smoothing=0.1))
    return g


def _setup(init_seed=0, accumulation=1, opt=None):
    data_rng = np.random.default_rng(0)
    data = {"x": data_rng.standard_normal((50, 6)).astype(np.float32), "y": data_rng.integers(0, 3, 50)}
    rng = np.random.default_rng(init_seed)
    params = {"w1": rng.standard_normal((8, 6)).astype(np.float32) * 0.3,
              "b1": np.zeros(8, np.float32), "w2": rng.standard_normal((3, 8)).astype(np.float32) * 0.3}
    step = TrainStep(classifier(4), opt or AdamW(lr=0.05), clip_norm=1.0, accumulation=accumulation)
    step.init(params)
    loader = ArrayLoader(data, 4, seed=7)
    return Trainer(step, loader, schedule=cosine(0.05, 3 * len(loader) // accumulation, 3), progress=False)


@pytest.mark.parametrize("stop_at,accumulation", [(5, 1), (12, 1), (4, 3)])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, stop_at, accumulation):
    full = _setup(accumulation=accumulation)
    full.fit(3)

    first = _setup(accumulation=accumulation)
    first.fit(3, max_steps=stop_at)
    assert first.step.step_count == stop_at
    first.save(tmp_path / "ck.safetensors")

    resumed = _setup(init_seed=99, accumulation=accumulation)  # other initial weights: all must come from the file
    resumed.load(tmp_path / "ck.safetensors")
    resumed.fit(3)
    assert resumed.step.step_count == full.step.step_count
    for k in full.step.params:
        assert np.array_equal(resumed.step.params[k], full.step.params[k]), k
    for k in full.step.opt_state:
        assert np.array_equal(resumed.step.opt_state[k], full.step.opt_state[k]), k
    assert resumed.step_losses == full.step_losses
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_checkpoint_holds_params_state_and_step(tmp_path):
    t = _setup(opt=SGD(lr=0.1, momentum=0.9))
    t.fit(1, max_steps=3)
    t.save(tmp_path / "c.safetensors")
    ck = load_checkpoint(tmp_path / "c.safetensors")
    assert ck["step"] == 3
    assert set(ck["params"]) == {"w1", "b1", "w2"}
    assert set(ck["opt_state"]) == {"momentum_buffer/w1", "momentum_buffer/b1", "momentum_buffer/w2"}
    assert ck["meta"]["optimizer"]["name"] == "SGD" and ck["meta"]["position"] == 3


def test_loading_a_non_checkpoint_names_the_file(tmp_path):
    from kiln.io.safetensors_file import save_safetensors
    save_safetensors(tmp_path / "w.safetensors", {"a": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="w.safetensors: not a kiln training checkpoint"):
        load_checkpoint(tmp_path / "w.safetensors")
