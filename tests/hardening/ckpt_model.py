"""The training run the checkpoint-kill test interrupts: a small MLP classifier under AdamW (about
250 kB of parameters and optimizer state), 16 optimizer steps over 2 epochs. Imported by the test
and by its training subprocess, so both run exactly the same thing. The matrices stay below
OpenBLAS's threading threshold (m*n*k < 262144), so every run sums in the same order."""

from __future__ import annotations

import numpy as np

import kiln
from kiln.train import AdamW, ArrayLoader, TrainStep, Trainer, cross_entropy

BATCH, IN, WIDTH, CLASSES, EPOCHS = 8, 32, 128, 4, 2


def make_trainer(init_seed: int = 0) -> Trainer:
    g = kiln.Graph("mlp")
    x = g.input("x", (BATCH, IN))
    h = g.gelu(g.linear(x, g.parameter("w1", (WIDTH, IN)), g.parameter("b1", (WIDTH,))))
    h = g.gelu(g.linear(h, g.parameter("w2", (WIDTH, WIDTH)), g.parameter("b2", (WIDTH,))))
    logits = g.linear(h, g.parameter("w3", (CLASSES, WIDTH)))
    g.output("loss", cross_entropy(g, logits, g.input("y", (BATCH,), "int64")))
    rng = np.random.default_rng(init_seed)
    params = {"w1": rng.standard_normal((WIDTH, IN)).astype(np.float32) * 0.2, "b1": np.zeros(WIDTH, np.float32),
              "w2": rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.08, "b2": np.zeros(WIDTH, np.float32),
              "w3": rng.standard_normal((CLASSES, WIDTH)).astype(np.float32) * 0.08}
    step = TrainStep(g, AdamW(lr=0.01), clip_norm=1.0)
    step.init(params)
    data_rng = np.random.default_rng(1)
    data = {"x": data_rng.standard_normal((64, IN)).astype(np.float32), "y": data_rng.integers(0, CLASSES, 64)}
    return Trainer(step, ArrayLoader(data, BATCH, seed=7), progress=False)
