"""Convolution, pooling and resampling ops, with PyTorch's (torch.nn.functional) semantics.

Layouts are channels-first: x is [N, C, *spatial]. The geometry helpers here
(`conv_geometry`, `pool_geometry`, `interp_geometry`, ...) are the one place that
turns attributes into pads, strides and output sizes; the type rules and every
backend's kernels call them, so shape inference and execution cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import GraphError
from ..op_spec import REQUIRED, OpSpec, register_op
from ._rules import expect_float, expect_same_dtype, tt

SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


# ---- attribute parsing ---------------------------------------------------------

def int_tuple(op: str, name: str, value, n: int, minimum: int) -> tuple[int, ...]:
    """An int or a list of n ints -> n ints, each >= minimum."""
    if _is_int(value):
        vals = (int(value),) * n
    elif isinstance(value, (list, tuple)) and len(value) == n and all(_is_int(v) for v in value):
        vals = tuple(int(v) for v in value)
    else:
        raise GraphError(f"op {op!r}: attribute {name!r} must be an int or a list of {n} ints, got {value!r}")
    if any(v < minimum for v in vals):
        raise GraphError(f"op {op!r}: attribute {name!r} must be >= {minimum} in every dim, got {value!r}")
    return vals


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def conv_padding(op: str, padding, kernel, dilation, stride) -> tuple[tuple[int, int], ...]:
    """Per-dim (lo, hi) pads from an int, n ints, n (lo, hi) pairs, "valid" or "same" (stride 1 only)."""
    n = len(kernel)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise GraphError(f"op {op!r}: padding='same' needs stride 1 (as in PyTorch), got stride {list(stride)}")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, (list, tuple)) and len(padding) == n and all(
            isinstance(p, (list, tuple)) for p in padding):
        if not all(len(p) == 2 and all(_is_int(v) and v >= 0 for v in p) for p in padding):
            raise GraphError(f"op {op!r}: padding pairs must be {n} non-negative (lo, hi) int pairs, got {padding!r}")
        return tuple((int(lo), int(hi)) for lo, hi in padding)
    if isinstance(padding, str) or not (_is_int(padding) or isinstance(padding, (list, tuple))):
        raise GraphError(f"op {op!r}: padding must be an int, {n} ints, {n} (lo, hi) pairs, 'same' or 'valid', "
                         f"got {padding!r}")
    return tuple((p, p) for p in int_tuple(op, "padding", padding, n, 0))


def expect_channels_first(op: str, nd: int, x_shape) -> None:
    if len(x_shape) != nd + 2:
        raise GraphError(f"op {op!r}: x must have rank {nd + 2} [N, C, {SPATIAL_NAMES[nd]}], "
                         f"got shape {tuple(x_shape)}")


def window_out_size(op: str, size: int, lo: int, hi: int, eff_kernel: int, stride: int, dim: int) -> int:
    """floor((size + lo + hi - eff_kernel) / stride) + 1, or a GraphError if the window does not fit."""
    padded = size + lo + hi
    if padded < eff_kernel:
        raise GraphError(f"op {op!r}: kernel of (dilated) size {eff_kernel} in spatial dim {dim} is larger than "
                         f"the padded input size {padded} ({size} + padding {lo} + {hi})")
    return (padded - eff_kernel) // stride + 1


# ---- convolution ---------------------------------------------------------------

@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]   # (lo, hi) per spatial dim of the input
    out_spatial: tuple[int, ...]


def conv_geometry(op: str, nd: int, x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    """Check x [N, C, *S] against weight [O, C/groups, *K] and return pads and output size."""
    expect_channels_first(op, nd, x_shape)
    if len(w_shape) != nd + 2:
        raise GraphError(f"op {op!r}: weight must have rank {nd + 2} [O, C/groups, {SPATIAL_NAMES[nd]}], "
                         f"got shape {tuple(w_shape)}")
    if not _is_int(groups) or groups < 1:
        raise GraphError(f"op {op!r}: groups must be a positive int, got {groups!r}")
    c, o = x_shape[1], w_shape[0]
    if c % groups or o % groups:
        raise GraphError(f"op {op!r}: groups={groups} must divide both the {c} input channels of x and "
                         f"the {o} output channels of weight")
    if w_shape[1] * groups != c:
        raise GraphError(f"op {op!r}: x has {c} channels but weight {tuple(w_shape)} expects "
                         f"{w_shape[1]} x groups={groups} = {w_shape[1] * groups}")
    kernel = tuple(w_shape[2:])
    if any(k < 1 for k in kernel):
        raise GraphError(f"op {op!r}: weight has an empty kernel {kernel}")
    stride = int_tuple(op, "stride", stride, nd, 1)
    dilation = int_tuple(op, "dilation", dilation, nd, 1)
    pads = conv_padding(op, padding, kernel, dilation, stride)
    out = tuple(window_out_size(op, s, lo, hi, d * (k - 1) + 1, st, i)
                for i, (s, (lo, hi), k, d, st) in enumerate(zip(x_shape[2:], pads, kernel, dilation, stride)))
    return ConvGeometry(stride, dilation, pads, out)


def _conv_infer(nd: int):
    name = f"conv{nd}d"

    def infer(types, attrs):
        x, w, b = types
        expect_float(name, "x", x)
        expect_same_dtype(name, {"x": x, "weight": w, "bias": b})
        geo = conv_geometry(name, nd, x.shape, w.shape, attrs["stride"], attrs["padding"],
                            attrs["dilation"], attrs["groups"])
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise GraphError(f"op {name!r}: bias must have shape ({w.shape[0]},), got {b}")
        return tt((x.shape[0], w.shape[0]) + geo.out_spatial, x.dtype)
    return infer


@dataclass(frozen=True)
class ConvTransposeGeometry:
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    out_spatial: tuple[int, ...]


def conv_transpose_geometry(op: str, nd: int, x_shape, w_shape, stride, padding, output_padding,
                            dilation, groups) -> ConvTransposeGeometry:
    """Check x [N, C, *S] against weight [C, O/groups, *K]; out = (S-1)*stride - 2*pad + dil*(K-1) + out_pad + 1."""
    expect_channels_first(op, nd, x_shape)
    if len(w_shape) != nd + 2:
        raise GraphError(f"op {op!r}: weight must have rank {nd + 2} [C, O/groups, {SPATIAL_NAMES[nd]}], "
                         f"got shape {tuple(w_shape)}")
    if not _is_int(groups) or groups < 1:
        raise GraphError(f"op {op!r}: groups must be a positive int, got {groups!r}")
    c = x_shape[1]
    if c % groups:
        raise GraphError(f"op {op!r}: groups={groups} must divide the {c} input channels of x")
    if w_shape[0] != c:
        raise GraphError(f"op {op!r}: x has {c} channels but weight {tuple(w_shape)} expects {w_shape[0]} "
                         f"(weight is [C_in, C_out/groups, *K])")
    kernel = tuple(w_shape[2:])
    if any(k < 1 for k in kernel):
        raise GraphError(f"op {op!r}: weight has an empty kernel {kernel}")
    stride = int_tuple(op, "stride", stride, nd, 1)
    pad = int_tuple(op, "padding", padding, nd, 0)
    out_pad = int_tuple(op, "output_padding", output_padding, nd, 0)
    dilation = int_tuple(op, "dilation", dilation, nd, 1)
    for op_, s, d in zip(out_pad, stride, dilation):
        if op_ >= s and op_ >= d:
            raise GraphError(f"op {op!r}: output_padding {list(out_pad)} must be smaller than either stride "
                             f"{list(stride)} or dilation {list(dilation)} in every dim")
    out = []
    for i, (s, k, st, p, op_, d) in enumerate(zip(x_shape[2:], kernel, stride, pad, out_pad, dilation)):
        size = (s - 1) * st - 2 * p + d * (k - 1) + op_ + 1
        if s < 1 or size < 1:
            raise GraphError(f"op {op!r}: output size {size} in spatial dim {i} is not positive (input {s}, "
                             f"kernel {k}, stride {st}, padding {p}, dilation {d}, output_padding {op_})")
        out.append(size)
    return ConvTransposeGeometry(stride, pad, out_pad, dilation, tuple(out))


def _conv_transpose_infer(nd: int):
    name = f"conv_transpose{nd}d"

    def infer(types, attrs):
        x, w, b = types
        expect_float(name, "x", x)
        expect_same_dtype(name, {"x": x, "weight": w, "bias": b})
        geo = conv_transpose_geometry(name, nd, x.shape, w.shape, attrs["stride"], attrs["padding"],
                                      attrs["output_padding"], attrs["dilation"], attrs["groups"])
        o = w.shape[1] * attrs["groups"]
        if b is not None and tuple(b.shape) != (o,):
            raise GraphError(f"op {name!r}: bias must have shape ({o},), got {b}")
        return tt((x.shape[0], o) + geo.out_spatial, x.dtype)
    return infer


for _nd in (1, 2, 3):
    register_op(OpSpec(
        f"conv{_nd}d", "conv", ("x", "weight", "bias?"), _conv_infer(_nd),
        attrs={"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
        doc=f"torch.nn.functional.conv{_nd}d; padding: int, per-dim ints, per-dim (lo, hi) pairs, 'same', 'valid'"))
    register_op(OpSpec(
        f"conv_transpose{_nd}d", "conv", ("x", "weight", "bias?"), _conv_transpose_infer(_nd),
        attrs={"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1},
        doc=f"torch.nn.functional.conv_transpose{_nd}d; weight is [C_in, C_out/groups, *K]"))


# ---- pooling -------------------------------------------------------------------

@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    out_spatial: tuple[int, ...]


def pool_geometry(op: str, nd: int, x_shape, kernel_size, stride, padding, dilation, ceil_mode) -> PoolGeometry:
    """PyTorch's pooling_output_shape: with ceil_mode the last window may overhang but must start inside."""
    expect_channels_first(op, nd, x_shape)
    kernel = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    stride = kernel if stride is None else int_tuple(op, "stride", stride, nd, 1)
    pad = int_tuple(op, "padding", padding, nd, 0)
    dilation = int_tuple(op, "dilation", dilation, nd, 1)
    if not isinstance(ceil_mode, bool):
        raise GraphError(f"op {op!r}: ceil_mode must be a bool, got {ceil_mode!r}")
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise GraphError(f"op {op!r}: padding {list(pad)} must be at most half of kernel_size {list(kernel)}")
    out = []
    for i, (s, k, st, p, d) in enumerate(zip(x_shape[2:], kernel, stride, pad, dilation)):
        eff = d * (k - 1) + 1
        n = (s + 2 * p - eff + (st - 1 if ceil_mode else 0)) // st + 1
        if ceil_mode and (n - 1) * st >= s + p:  # the last window would start in the right padding
            n -= 1
        if n < 1:
            raise GraphError(f"op {op!r}: kernel of (dilated) size {eff} in spatial dim {i} is larger than "
                             f"the padded input size {s + 2 * p} ({s} + padding {p} + {p})")
        out.append(n)
    return PoolGeometry(kernel, stride, pad, dilation, tuple(out))


def _pool_infer(name: str, nd: int, with_dilation: bool):
    def infer(types, attrs):
        (x,) = types
        expect_float(name, "x", x)
        geo = pool_geometry(name, nd, x.shape, attrs["kernel_size"], attrs["stride"], attrs["padding"],
                            attrs["dilation"] if with_dilation else 1, attrs["ceil_mode"])
        if not with_dilation:
            d = attrs["divisor_override"]
            if d is not None and (not _is_int(d) or d < 1):
                raise GraphError(f"op {name!r}: divisor_override must be None or a positive int, got {d!r}")
            if not isinstance(attrs["count_include_pad"], bool):
                raise GraphError(f"op {name!r}: count_include_pad must be a bool, got {attrs['count_include_pad']!r}")
        return tt(x.shape[:2] + geo.out_spatial, x.dtype)
    return infer


def adaptive_output_size(op: str, nd: int, x_shape, output_size) -> tuple[int, ...]:
    """An int or n entries (None keeps that input dim), each >= 1."""
    expect_channels_first(op, nd, x_shape)
    if isinstance(output_size, (list, tuple)) and len(output_size) == nd:
        sizes = [s_in if s is None else s for s, s_in in zip(output_size, x_shape[2:])]
    else:
        sizes = output_size
    out = int_tuple(op, "output_size", sizes, nd, 1)
    if any(s < 1 for s in x_shape[2:]):
        raise GraphError(f"op {op!r}: x has an empty spatial dim, got shape {tuple(x_shape)}")
    return out


def adaptive_bins(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive bins: output i averages [floor(i*in/out), ceil((i+1)*in/out))."""
    i = np.arange(out_size)
    return (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)


def _adaptive_infer(name: str, nd: int):
    def infer(types, attrs):
        (x,) = types
        expect_float(name, "x", x)
        return tt(x.shape[:2] + adaptive_output_size(name, nd, x.shape, attrs["output_size"]), x.dtype)
    return infer


for _nd in (1, 2, 3):
    register_op(OpSpec(
        f"max_pool{_nd}d", "pool", ("x",), _pool_infer(f"max_pool{_nd}d", _nd, True),
        attrs={"kernel_size": REQUIRED, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False},
        doc=f"torch.nn.functional.max_pool{_nd}d (padding counts as -inf; stride defaults to kernel_size)"))
    register_op(OpSpec(
        f"avg_pool{_nd}d", "pool", ("x",), _pool_infer(f"avg_pool{_nd}d", _nd, False),
        attrs={"kernel_size": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False,
               "count_include_pad": True, "divisor_override": None},
        doc=f"torch.nn.functional.avg_pool{_nd}d"))
    register_op(OpSpec(
        f"adaptive_avg_pool{_nd}d", "pool", ("x",), _adaptive_infer(f"adaptive_avg_pool{_nd}d", _nd),
        attrs={"output_size": REQUIRED},
        doc=f"torch.nn.functional.adaptive_avg_pool{_nd}d: bins floor(i*in/out) .. ceil((i+1)*in/out)"))


# ---- resampling ----------------------------------------------------------------

INTERP_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear")
_LINEAR_RANK = {"linear": 3, "bilinear": 4, "trilinear": 5}


@dataclass(frozen=True)
class InterpGeometry:
    out_spatial: tuple[int, ...]
    scales: tuple[float | None, ...]  # the user's scale factors where torch uses them for coordinates


def interp_geometry(op: str, x_shape, size, scale_factor, mode, align_corners,
                    recompute_scale_factor) -> InterpGeometry:
    """torch.nn.functional.interpolate's output size and the scales its kernels map coordinates with."""
    rank = len(x_shape)
    if rank not in (3, 4, 5):
        raise GraphError(f"op {op!r}: x must have rank 3, 4 or 5 [N, C, *spatial], got shape {tuple(x_shape)}")
    nd = rank - 2
    if mode not in INTERP_MODES:
        raise GraphError(f"op {op!r}: mode must be one of {INTERP_MODES}, got {mode!r}")
    if mode in _LINEAR_RANK and _LINEAR_RANK[mode] != rank:
        raise GraphError(f"op {op!r}: mode {mode!r} needs a rank-{_LINEAR_RANK[mode]} x, got shape {tuple(x_shape)}")
    if align_corners is not None and (mode not in _LINEAR_RANK or not isinstance(align_corners, bool)):
        raise GraphError(f"op {op!r}: align_corners must be None, or a bool with a linear mode "
                         f"{tuple(_LINEAR_RANK)}, got {align_corners!r} with mode {mode!r}")
    if recompute_scale_factor is not None and not isinstance(recompute_scale_factor, bool):
        raise GraphError(f"op {op!r}: recompute_scale_factor must be None or a bool, got {recompute_scale_factor!r}")
    if any(s < 1 for s in x_shape[2:]):
        raise GraphError(f"op {op!r}: x has an empty spatial dim, got shape {tuple(x_shape)}")
    if (size is None) == (scale_factor is None):
        raise GraphError(f"op {op!r}: give exactly one of size and scale_factor, got size={size!r}, "
                         f"scale_factor={scale_factor!r}")
    if size is not None:
        return InterpGeometry(int_tuple(op, "size", size, nd, 1), (None,) * nd)
    if isinstance(scale_factor, (int, float)) and not isinstance(scale_factor, bool):
        scales = (float(scale_factor),) * nd
    elif isinstance(scale_factor, (list, tuple)) and len(scale_factor) == nd and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale_factor):
        scales = tuple(float(s) for s in scale_factor)
    else:
        raise GraphError(f"op {op!r}: scale_factor must be a number or a list of {nd} numbers, got {scale_factor!r}")
    if any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise GraphError(f"op {op!r}: scale_factor must be positive and finite, got {scale_factor!r}")
    out = tuple(math.floor(float(s_in) * s) for s_in, s in zip(x_shape[2:], scales))
    if any(o < 1 for o in out):
        raise GraphError(f"op {op!r}: scale_factor {scale_factor!r} gives an empty output {out} for x {tuple(x_shape)}")
    return InterpGeometry(out, (None,) * nd if recompute_scale_factor else scales)


def _interpolate(types, attrs):
    (x,) = types
    expect_float("interpolate", "x", x)
    geo = interp_geometry("interpolate", x.shape, attrs["size"], attrs["scale_factor"], attrs["mode"],
                          attrs["align_corners"], attrs["recompute_scale_factor"])
    return tt(x.shape[:2] + geo.out_spatial, x.dtype)


register_op(OpSpec(
    "interpolate", "resample", ("x",), _interpolate,
    attrs={"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
           "recompute_scale_factor": None},
    doc="torch.nn.functional.interpolate (antialias=False) for nearest, nearest-exact, (bi/tri)linear"))


def _pixel_shuffle(types, attrs):
    (x,) = types
    r = attrs["upscale_factor"]
    if not _is_int(r) or r < 1:
        raise GraphError(f"op 'pixel_shuffle': upscale_factor must be a positive int, got {r!r}")
    if x.rank < 3:
        raise GraphError(f"op 'pixel_shuffle': x must have rank >= 3 [*, C*r*r, H, W], got {x}")
    c = x.shape[-3]
    if c % (r * r):
        raise GraphError(f"op 'pixel_shuffle': {c} channels are not divisible by upscale_factor^2 = {r * r}")
    return tt(x.shape[:-3] + (c // (r * r), x.shape[-2] * r, x.shape[-1] * r), x.dtype)


def _pixel_unshuffle(types, attrs):
    (x,) = types
    r = attrs["downscale_factor"]
    if not _is_int(r) or r < 1:
        raise GraphError(f"op 'pixel_unshuffle': downscale_factor must be a positive int, got {r!r}")
    if x.rank < 3:
        raise GraphError(f"op 'pixel_unshuffle': x must have rank >= 3 [*, C, H*r, W*r], got {x}")
    h, w = x.shape[-2:]
    if h % r or w % r:
        raise GraphError(f"op 'pixel_unshuffle': height {h} and width {w} must be divisible by "
                         f"downscale_factor {r}")
    return tt(x.shape[:-3] + (x.shape[-3] * r * r, h // r, w // r), x.dtype)


register_op(OpSpec("pixel_shuffle", "layout", ("x",), _pixel_shuffle, attrs={"upscale_factor": REQUIRED},
                   doc="[*, C*r*r, H, W] -> [*, C, H*r, W*r], torch.nn.functional.pixel_shuffle"))
register_op(OpSpec("pixel_unshuffle", "layout", ("x",), _pixel_unshuffle, attrs={"downscale_factor": REQUIRED},
                   doc="[*, C, H*r, W*r] -> [*, C*r*r, H, W], torch.nn.functional.pixel_unshuffle"))
