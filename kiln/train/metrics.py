"""Metric graph builders (not differentiated; outputs of training and evaluation graphs)."""

from __future__ import annotations

from kiln.ir import Graph, GraphError, Value


def accuracy(g: Graph, logits: Value, labels: Value) -> Value:
    """Fraction of rows whose arg-max class equals the label (float32 scalar)."""
    if tuple(labels.shape) != tuple(logits.shape[:-1]) or not labels.dtype.is_int:
        raise GraphError(f"accuracy: labels must be integers of shape {tuple(logits.shape[:-1])}, got {labels.type}")
    pred = g.argmax(logits, axis=-1)
    hit = g.equal(pred, labels if labels.dtype.name == "int64" else g.cast(labels, dtype="int64"))
    return g.mean(g.cast(hit, dtype="float32"))
