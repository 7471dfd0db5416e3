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
    One fused op (`softmax_cross_entropy`) computes the rows' losses; its backward writes the
    logits' gradient row by row from the saved log-sum-exp. Half-precision logits give float32
    losses, and logits that are a float32 cast of half values are read in their half type (exact:
    the op computes in float32 either way), so the gradient is written in the half type.
    """
    _check_reduction("cross_entropy", reduction)
    if not logits.dtype.is_float or logits.ndim < 1:
        raise GraphError(f"cross_entropy: logits must be a float tensor [..., classes], got {logits.type}")
    if not labels.dtype.is_int or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise GraphError(f"cross_entropy: labels must be integers of shape {tuple(logits.shape[:-1])} "
                         f"(logits {logits.type} without the class axis), got {labels.type}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise GraphError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    per, _lse = g.softmax_cross_entropy(_half_source(g, logits), labels, ignore_index=ignore_index,
                                        label_smoothing=float(label_smoothing))
    if reduction == "none":
        return per
    total = g.sum(per)
    if reduction == "sum":
        return total
    valid = g.not_equal(labels, g.scalar(ignore_index, labels.dtype))
    return g.div(total, g.sum(g.cast(valid, dtype=per.dtype.name)))


def _half_source(g: Graph, logits: Value) -> Value:
    """The half-precision values a float32 `logits` was cast from (through slices, which commute
    with the cast), or logits itself."""
    node = logits.node
    if node.op == "slice":
        src = _half_source(g, node.inputs[0])
        return logits if src is node.inputs[0] else g.slice(src, **node.attrs)
    if node.op == "cast" and logits.dtype.name == "float32" and node.inputs[0].dtype.name in ("bfloat16", "float16"):
        return node.inputs[0]
    return logits


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
