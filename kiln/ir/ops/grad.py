"""Ops that backward passes need and forward models do not: scatter-adds (the transposes of
gathers), attention with its log-sum-exp saved, plus attention's, softmax cross-entropy's and
rms_norm's fused backwards.

They are ordinary ops (type rules here, kernels per backend, VJP/JVP rules in kiln.autodiff),
so a training graph is just a graph.
"""

from __future__ import annotations

from ..dtypes import accumulation_dtype
from ..errors import GraphError
from ..op_spec import REQUIRED, OpSpec, register_op
from ..shapes import norm_axis
from ._rules import expect_float, expect_int, expect_same_dtype, expect_shape, tt
from .attention import _attention
from .reduction import CROSS_ENTROPY_ATTRS, check_cross_entropy


def _index_add(types, attrs):
    idx, src = types
    expect_int("index_add", "indices", idx)
    size = attrs["size"]
    if not isinstance(size, int) or size < 1:
        raise GraphError(f"op 'index_add': size must be a positive int, got {size!r}")
    rank = src.rank - idx.rank + 1
    axis = norm_axis(attrs["axis"], max(rank, 1))
    if src.shape[axis:axis + idx.rank] != idx.shape:
        raise GraphError(f"op 'index_add': src {src} must have the indices' shape {idx.shape} at axis {axis}")
    return tt(src.shape[:axis] + (size,) + src.shape[axis + idx.rank:], src.dtype)


register_op(OpSpec(
    "index_add", "gather", ("indices", "src"), _index_add, attrs={"axis": 0, "size": REQUIRED},
    doc="The transpose of gather(x, indices, axis): zeros with `size` entries along `axis`, and src's "
        "slices added at `indices` (repeated indices accumulate). Gives gather and embedding gradients."))


def _scatter_add(types, attrs):
    idx, src = types
    expect_int("scatter_add", "indices", idx)
    axis = norm_axis(attrs["axis"], src.rank)
    size = attrs["size"]
    if not isinstance(size, int) or size < 1:
        raise GraphError(f"op 'scatter_add': size must be a positive int, got {size!r}")
    if idx.rank != src.rank or any(i != s and i != 1 for i, s in zip(idx.shape, src.shape)):
        raise GraphError(f"op 'scatter_add': indices {idx} must broadcast to src {src} (same rank)")
    if idx.shape[axis] != src.shape[axis]:
        raise GraphError(f"op 'scatter_add': indices {idx} and src {src} must agree along axis {axis}")
    shape = list(src.shape)
    shape[axis] = size
    return tt(shape, src.dtype)


register_op(OpSpec(
    "scatter_add", "gather", ("indices", "src"), _scatter_add, attrs={"axis": -1, "size": REQUIRED},
    doc="The transpose of take_along_axis: zeros of src's shape with `size` along `axis`, and "
        "out[..., indices[..., i, ...], ...] += src[..., i, ...] (torch.Tensor.scatter_add_)."))


def _attention_lse(types, attrs):
    out = _attention(types, attrs)
    q = types[0]
    return [out, tt(q.shape[:3], accumulation_dtype(q.dtype))]


ATTENTION_ATTRS = {"causal": False, "scale": None, "window": None, "softcap": None}

register_op(OpSpec(
    "attention_lse", "attention", ("q", "k", "v", "mask?"), _attention_lse, attrs=dict(ATTENTION_ATTRS),
    num_outputs=2,
    doc="attention (same semantics) that also returns the log-sum-exp of each query's scores "
        "[B, Hq, Sq] (float32 for half inputs; -inf for a fully masked row), which is all its "
        "backward needs besides the output: no [Sq, Sk] probabilities are stored."))


def _attention_backward(types, attrs):
    q, k, v, mask, out, lse, dout, dlse = types
    expected_out = _attention([q, k, v, mask], attrs)
    expect_shape("attention_backward", "out", out, expected_out.shape)
    expect_shape("attention_backward", "dout", dout, expected_out.shape)
    expect_same_dtype("attention_backward", {"q": q, "out": out, "dout": dout})
    lse_t = tt(q.shape[:3], accumulation_dtype(q.dtype))
    for name, t in (("lse", lse), ("dlse", dlse)):
        if t is not None and t != lse_t:
            raise GraphError(f"op 'attention_backward': {name} must be {lse_t}, got {t}")
    outs = [q, k, v]
    if attrs["mask_grad"]:
        if mask is None or not mask.dtype.is_float:
            raise GraphError(f"op 'attention_backward': mask_grad needs a float (additive) mask, got {mask}")
        outs.append(tt(q.shape[:3] + (k.shape[2],), q.dtype))
    return outs


register_op(OpSpec(
    "attention_backward", "attention", ("q", "k", "v", "mask?", "out", "lse", "dout", "dlse?"),
    _attention_backward, attrs=dict(ATTENTION_ATTRS, mask_grad=False),
    num_outputs=lambda attrs: 4 if attrs["mask_grad"] else 3,
    doc="Gradients (dq, dk, dv[, dscores]) of attention_lse from its output and saved log-sum-exp; "
        "probabilities are recomputed from lse. dlse is the cotangent of lse (second-order use). "
        "With mask_grad, also the gradient of the scores [B, Hq, Sq, Sk], i.e. of an additive mask."))


def _softmax_cross_entropy_backward(types, attrs):
    op = "softmax_cross_entropy_backward"
    logits, labels, lse, dloss, dlse = types
    row = check_cross_entropy(op, logits, labels, attrs)
    for name, t in (("lse", lse), ("dloss", dloss), ("dlse", dlse)):
        if t is not None and t != row:
            raise GraphError(f"op {op!r}: {name} must be {row} (one per row of logits {logits}), got {t}")
    return logits


register_op(OpSpec(
    "softmax_cross_entropy_backward", "reduction", ("logits", "labels", "lse", "dloss", "dlse?"),
    _softmax_cross_entropy_backward, attrs=dict(CROSS_ENTROPY_ATTRS),
    doc="The gradient of softmax_cross_entropy's logits, in the logits' dtype, from its saved lse: "
        "p * (d + dlse) - ((1 - e) onehot(label) + e / V) * d with p = exp(logits - lse) and d = dloss "
        "(0 on rows whose label is ignore_index). dlse is the cotangent of lse (absent: 0), so ignored "
        "rows get zeros. Computed row by row; the probabilities are never stored."))


def _rms_norm_backward(types, attrs):
    op = "rms_norm_backward"
    x, w, dy = types
    expect_float(op, "x", x)
    expect_shape(op, "dy", dy, x.shape)
    expect_same_dtype(op, {"x": x, "dy": dy})
    if w is not None:
        expect_shape(op, "weight", w, (x.shape[-1],))
        expect_same_dtype(op, {"x": x, "weight": w})
    if attrs["weight_grad"]:
        if w is None:
            raise GraphError(f"op {op!r}: weight_grad needs a weight")
        return [x, w]
    return [x]


register_op(OpSpec(
    "rms_norm_backward", "reduction", ("x", "weight?", "dy"), _rms_norm_backward,
    attrs={"eps": 1e-6, "add_unit_offset": False, "weight_grad": False},
    num_outputs=lambda attrs: 2 if attrs["weight_grad"] else 1,
    doc="The gradients of y = rms_norm(x, weight) from dy: dx = rstd * (dy * w - xhat * mean(dy * w * "
        "xhat)) with xhat = x * rstd (w + 1 with add_unit_offset), and with weight_grad also "
        "dweight = the sum over every row of dy * xhat. The statistics are recomputed from x, in "
        "float32 for half inputs, and each result is rounded once: one pass over x and dy instead "
        "of the eight launches its primitives took."))


def _interpolate_backward(types, attrs):
    (dy,) = types
    from ._rules import expect_float
    from .conv import interp_geometry
    expect_float("interpolate_backward", "dy", dy)
    in_size = attrs["input_size"]
    if not isinstance(in_size, (list, tuple)) or len(in_size) != dy.rank - 2:
        raise GraphError(f"op 'interpolate_backward': input_size must list the {dy.rank - 2} spatial sizes "
                         f"of interpolate's input, got {in_size!r}")
    x_shape = tuple(dy.shape[:2]) + tuple(in_size)
    geo = interp_geometry("interpolate_backward", x_shape, attrs["size"], attrs["scale_factor"], attrs["mode"],
                          attrs["align_corners"], attrs["recompute_scale_factor"])
    if tuple(geo.out_spatial) != tuple(dy.shape[2:]):
        raise GraphError(f"op 'interpolate_backward': dy {dy} must have interpolate's output size "
                         f"{tuple(geo.out_spatial)} for an input of spatial size {tuple(in_size)}")
    return tt(x_shape, dy.dtype)


register_op(OpSpec(
    "interpolate_backward", "resample", ("dy",), _interpolate_backward,
    attrs={"input_size": REQUIRED, "size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
           "recompute_scale_factor": None},
    doc="The transpose of interpolate (same attributes, plus the input's spatial size): every output "
        "element's cotangent is added back to the input elements it was interpolated from."))
