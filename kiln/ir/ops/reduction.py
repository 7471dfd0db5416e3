"""Reductions over axes (sum, mean, max, min, argmax), row-wise softmax / log_softmax, the
row-wise softmax cross-entropy (a reduction over the class axis), and the sum of squares of many
tensors (a global gradient norm's square)."""

from __future__ import annotations

from ..dtypes import accumulation_dtype, bool_, float64, int64
from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ..shapes import norm_axes, norm_axis, reduced_shape
from ._rules import expect_float, expect_int, expect_shape, tt


def _reduce(name):
    def infer(types, attrs):
        (x,) = types
        if x.dtype == bool_:
            raise GraphError(f"op {name!r}: input 'x' must be numeric, got {x}")
        if name == "mean":
            expect_float(name, "x", x)
        axes = norm_axes(attrs["axes"], x.rank)
        if name in ("max", "min") and any(x.shape[a] == 0 for a in axes):
            raise GraphError(f"op {name!r}: cannot reduce an empty axis of {x}")
        return tt(reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype)
    return infer


for _n in ("sum", "mean", "max", "min"):
    register_op(OpSpec(_n, "reduction", ("x",), _reduce(_n), attrs={"axes": None, "keepdims": False}))


def _sum_squares(types, attrs):
    (xs,) = types
    for i, x in enumerate(xs):
        expect_float("sum_squares", f"xs[{i}]", x)
    return tt((), float64)


# one op, not a sum(x * x) per tensor added up: a backend reduces every tensor in one launch (the
# gradient norm of a training step reads all its gradients) and materializes no squares
register_op(OpSpec("sum_squares", "reduction", ("*xs",), _sum_squares, differentiable=False,
                   doc="the sum of the squares of every element of every x as a float64 scalar (float32 "
                       "accumulation within a tensor, float64 for float64 tensors and across tensors)"))


def _argmax(types, attrs):
    (x,) = types
    a = norm_axis(attrs["axis"], x.rank)
    return tt(reduced_shape(x.shape, [a], attrs["keepdims"]), int64)


register_op(OpSpec("argmax", "reduction", ("x",), _argmax, attrs={"axis": -1, "keepdims": False},
                   differentiable=False))


def _softmax(name):
    def infer(types, attrs):
        (x,) = types
        expect_float(name, "x", x)
        norm_axis(attrs["axis"], x.rank)
        return x
    return infer


register_op(OpSpec("softmax", "reduction", ("x",), _softmax("softmax"), attrs={"axis": -1}))
register_op(OpSpec("log_softmax", "reduction", ("x",), _softmax("log_softmax"), attrs={"axis": -1}))


def check_cross_entropy(op: str, logits, labels, attrs):
    """The type rule softmax_cross_entropy and its backward share: float logits [..., V], integer
    labels [...], an int ignore_index, label_smoothing in [0, 1]; returns the per-row float type."""
    expect_float(op, "logits", logits)
    if logits.rank < 1 or logits.shape[-1] < 1:
        raise GraphError(f"op {op!r}: logits must be [..., classes] with at least one class, got {logits}")
    expect_int(op, "labels", labels)
    expect_shape(op, "labels", labels, logits.shape[:-1])
    ignore = attrs["ignore_index"]
    if not isinstance(ignore, int) or isinstance(ignore, bool):
        raise GraphError(f"op {op!r}: ignore_index must be an int, got {ignore!r}")
    e = attrs["label_smoothing"]
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e <= 1.0:
        raise GraphError(f"op {op!r}: label_smoothing must be a number in [0, 1], got {e!r}")
    return tt(labels.shape, accumulation_dtype(logits.dtype))


CROSS_ENTROPY_ATTRS = {"ignore_index": -100, "label_smoothing": 0.0}


def _softmax_cross_entropy(types, attrs):
    row = check_cross_entropy("softmax_cross_entropy", *types, attrs)
    return [row, row]


register_op(OpSpec(
    "softmax_cross_entropy", "reduction", ("logits", "labels"), _softmax_cross_entropy,
    attrs=dict(CROSS_ENTROPY_ATTRS), num_outputs=2,
    doc="Per-row softmax cross-entropy of logits [..., V] against integer labels [...] and the rows' "
        "log-sum-exp, both float32 for half logits: loss = lse - (1 - e) x[label] - e mean(x) "
        "(e = label_smoothing, torch's definition), 0 where label == ignore_index (lse is still the row's). "
        "Any other label outside [0, V) is an error on the CPU and gives a NaN loss on the GPU. Its VJP is "
        "softmax_cross_entropy_backward, so no [..., V] probabilities or log-probabilities are stored."))
