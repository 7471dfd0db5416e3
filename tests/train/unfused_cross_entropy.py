"""The cross-entropy kiln.train.losses built before the fused op: log_softmax -> take_along_axis ->
mean, kept as the reference the fused path must reproduce (losses and gradients)."""

from __future__ import annotations


def cross_entropy_log_softmax(g, logits, labels, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
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
