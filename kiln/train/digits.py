"""The built-in training example: scikit-learn's 8x8 handwritten digits (1797 images, ships with
scikit-learn), classified by an MLP or a small CNN built as kiln graphs and trained on the CPU."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from kiln.runtime.compiler import compile as compile_graph
from kiln.ir import Graph

from .loader import ArrayLoader
from .losses import cross_entropy
from .metrics import accuracy
from .optimizers import Adam
from .schedules import cosine
from .step import TrainStep
from .trainer import Trainer

CLASSES = 10
MODELS = ("mlp", "cnn")
DEFAULT_EPOCHS = {"mlp": 20, "cnn": 15}
DEFAULT_LR = {"mlp": 3e-3, "cnn": 5e-3}


def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1] as float32 [N, 64], labels int64,
    a stratified split from a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _head(g: Graph, logits, batch: int) -> Graph:
    y = g.input("y", (batch,), "int64")
    g.output("logits", logits)
    g.output("loss", cross_entropy(g, logits, y))
    g.output("accuracy", accuracy(g, logits, y))
    return g


def mlp_graph(batch: int, hidden: int = 128) -> Graph:
    """64 -> hidden -> hidden -> 10 with ReLU."""
    g = Graph("digits_mlp")
    x = g.input("x", (batch, 64), "float32")
    h = g.relu(g.linear(x, g.parameter("fc1.weight", (hidden, 64)), g.parameter("fc1.bias", (hidden,))))
    h = g.relu(g.linear(h, g.parameter("fc2.weight", (hidden, hidden)), g.parameter("fc2.bias", (hidden,))))
    logits = g.linear(h, g.parameter("out.weight", (CLASSES, hidden)), g.parameter("out.bias", (CLASSES,)))
    return _head(g, logits, batch)


def cnn_graph(batch: int, c1: int = 16, c2: int = 32) -> Graph:
    """conv3x3(c1) - relu - maxpool2 - conv3x3(c2) - relu - maxpool2 - linear, on 1x8x8 images."""
    g = Graph("digits_cnn")
    x = g.reshape(g.input("x", (batch, 64), "float32"), shape=[batch, 1, 8, 8])
    h = g.conv2d(x, g.parameter("conv1.weight", (c1, 1, 3, 3)), g.parameter("conv1.bias", (c1,)), padding=1)
    h = g.max_pool2d(g.relu(h), kernel_size=2)
    h = g.conv2d(h, g.parameter("conv2.weight", (c2, c1, 3, 3)), g.parameter("conv2.bias", (c2,)), padding=1)
    h = g.max_pool2d(g.relu(h), kernel_size=2)
    logits = g.linear(g.reshape(h, shape=[batch, c2 * 4]), g.parameter("out.weight", (CLASSES, c2 * 4)),
                      g.parameter("out.bias", (CLASSES,)))
    return _head(g, logits, batch)


def init_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """torch.nn's default init: uniform(+-1/sqrt(fan_in)) for weights and biases."""
    rng = np.random.default_rng(seed)
    params = {}
    fan_in = {}
    for name, v in graph.parameters.items():
        if name.endswith(".weight"):
            fan_in[name.rsplit(".", 1)[0]] = math.prod(v.shape[1:])
    for name, v in graph.parameters.items():
        bound = 1.0 / math.sqrt(fan_in[name.rsplit(".", 1)[0]])
        params[name] = rng.uniform(-bound, bound, v.shape).astype(v.dtype.np_dtype)
    return params


def build(model: str) -> Callable[[int], Graph]:
    if model not in MODELS:
        raise ValueError(f"unknown digits model {model!r}; expected one of {MODELS}")
    return mlp_graph if model == "mlp" else cnn_graph


def train_digits(model: str = "mlp", epochs: int | None = None, *, batch_size: int = 32, lr: float | None = None,
                 seed: int = 0, progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Train on the digits training split (Adam, warmup + cosine schedule); returns
    {"history", "test_accuracy", "params"}. epochs and lr default per model."""
    make = build(model)
    epochs = DEFAULT_EPOCHS[model] if epochs is None else epochs
    lr = DEFAULT_LR[model] if lr is None else lr
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    x_tr, y_tr, x_te, y_te = load_digits_split(seed=seed)
    train_graph = make(batch_size)
    step = TrainStep(train_graph, Adam(lr=lr), metrics=("accuracy",))
    step.init(init_params(train_graph, seed))

    test_graph = make(len(x_te))
    evaluator = compile_graph(test_graph)

    def evaluate(params):
        evaluator.load_params(params)
        res = evaluator.run(x=x_te, y=y_te)
        return {"test_loss": float(res["loss"]), "test_accuracy": float(res["accuracy"])}

    loader = ArrayLoader({"x": x_tr, "y": y_tr}, batch_size, seed=seed)
    total = epochs * len(loader)
    trainer = Trainer(step, loader, schedule=cosine(lr, total_steps=total, warmup_steps=len(loader)),
                      evaluate=evaluate, progress=progress, log=log)
    history = trainer.fit(epochs)
    return {"history": history, "test_accuracy": history[-1]["test_accuracy"], "params": step.params}
