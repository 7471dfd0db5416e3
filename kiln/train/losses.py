"""Loss functions as graph builders, with PyTorch's semantics (torch.nn.functional).

Each takes the Graph and Values and returns a Value: a scalar for reduction "mean" / "sum",
the per-element losses for "none".
"""

from __future__ import annotations

from kiln.ir import Graph, GraphError, Value

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(fn: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise GraphError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(g: Graph, per: Value, reduction: str) -> Value:
    if reduction == "none":
        return per
    return g.sum(per) if reduction == "sum" else g.mean(per)


def cross_entropy(g: Graph, logits: Value, labels: Value, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> Value:
    """Softmax cross-entropy of logits [..., C] (classes on the last axis) against int labels [...].

    Labels equal to ignore_index contribute nothing and are left out of the mean; with
    label_smoothing e the target is (1 - e) one-hot + e / C uniform (torch's definition).
    """
    _check_reduction("cross_entropy", reduction)
    if not logits.dtype.is_float or logits.ndim < 1:
        raise GraphError(f"cross_entropy: logits must be a float tensor [..., classes], got {logits.type}")
    if not labels.dtype.is_int or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise GraphError(f"cross_entropy: labels must be integers of shape {tuple(logits.shape[:-1])} "
                         f"(logits {logits.type} without the class axis), got {labels.type}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise GraphError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    logp = g.log_softmax(logits, axis=-1)
    valid = g.not_equal(labels, g.scalar(ignore_index, labels.dtype))
    safe = g.where(valid, labels, g.scalar(0, labels.dtype))
    picked = g.take_along_axis(logp, g.reshape(safe, shape=list(safe.shape) + [1]), axis=-1)
    per = g.neg(g.reshape(picked, shape=list(labels.shape)))
    if label_smoothing:
        smooth = g.neg(g.mean(logp, axes=[-1]))
        per = g.add(g.mul(per, g.scalar(1.0 - label_smoothing, per.dtype)),
                    g.mul(smooth, g.scalar(label_smoothing, per.dtype)))
    per = g.where(valid, per, g.scalar(0, per.dtype))
    if reduction == "none":
        return per
    total = g.sum(per)
    if reduction == "sum":
        return total
    return g.div(total, g.sum(g.cast(valid, dtype=per.dtype.name)))


def mse_loss(g: Graph, pred: Value, target: Value, *, reduction: str = "mean") -> Value:
    """Mean (or summed) squared error; pred and target must have the same type."""
    _check_reduction("mse_loss", reduction)
    if pred.type != target.type or not pred.dtype.is_float:
        raise GraphError(f"mse_loss: pred and target must be float tensors of one type, got {pred.type} and {target.type}")
    d = g.sub(pred, target)
    return _reduce(g, g.mul(d, d), reduction)


def softplus(g: Graph, x: Value) -> Value:
    """log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|))."""
    return g.add(g.relu(x), g.log(g.add(g.exp(g.neg(g.abs(x))), g.scalar(1.0, x.dtype))))


def bce_with_logits(g: Graph, logits: Value, targets: Value, *, pos_weight: Value | None = None,
                    reduction: str = "mean") -> Value:
    """Binary cross-entropy on logits: -[w y log s(x) + (1 - y) log(1 - s(x))], w = pos_weight or 1."""
    _check_reduction("bce_with_logits", reduction)
    if logits.type != targets.type or not logits.dtype.is_float:
        raise GraphError(f"bce_with_logits: logits and targets must be float tensors of one type, "
                         f"got {logits.type} and {targets.type}")
    one = g.scalar(1.0, logits.dtype)
    neg_log_sig = softplus(g, g.neg(logits))  # -log sigmoid(x)
    weight = one if pos_weight is None else g.add(one, g.mul(g.sub(pos_weight, one), targets))
    per = g.add(g.mul(g.sub(one, targets), logits), g.mul(weight, neg_log_sig))
    return _reduce(g, per, reduction)
