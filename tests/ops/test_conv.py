"""Convolution, pooling and resampling ops against torch.nn.functional, through kiln.compile(g).run().

Half-precision kernels compute in float32 and round once, so their reference is torch in
float32 on the upcast inputs, rounded to the half type, compared to within a half ulp or two.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kiln
from kiln import GraphError
from kiln.ir import graph_from_dict, graph_to_dict

TESTED_OPS = {
    "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "interpolate", "pixel_shuffle", "pixel_unshuffle",
}

DTYPES = ["float32", "float64", "float16", "bfloat16"]
TOL = {"float32": 1e-5, "float64": 1e-11, "float16": 2e-3, "bfloat16": 1.6e-2}
NP_DTYPE = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16}


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(NP_DTYPE[dtype])


def run_kiln(op: str, arrays: list, **attrs) -> np.ndarray:
    """One-op graph with every array an input (None stays an absent optional input)."""
    g = kiln.Graph()
    vals = [None if a is None else g.input(f"in{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    g.output("y", g.op(op, *vals, **attrs))
    feeds = {f"in{i}": a for i, a in enumerate(arrays) if a is not None}
    return kiln.compile(g, optimize=False).run(**feeds)["y"]


def run_torch(fn, arrays: list, dtype: str, **kwargs) -> np.ndarray:
    """fn on the inputs: in their own dtype for float32/64, in float32 then rounded for half types."""
    compute = torch.float64 if dtype == "float64" else torch.float32
    ts = [None if a is None else torch.from_numpy(np.asarray(a, np.float64)).to(compute) for a in arrays]
    y = fn(*ts, **kwargs)
    return y.to(TORCH_DTYPE[dtype]).to(torch.float64).numpy()


def check(op, fn, arrays, dtype, attrs, torch_kwargs=None, exact=False):
    got = run_kiln(op, arrays, **attrs)
    ref = run_torch(fn, arrays, dtype, **(attrs if torch_kwargs is None else torch_kwargs))
    assert got.dtype == NP_DTYPE[dtype], f"{op} returned {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape, f"{op}: shape {got.shape} != torch {ref.shape}"
    got64 = got.astype(np.float64)
    if exact:
        np.testing.assert_array_equal(got64, ref)
    else:
        np.testing.assert_allclose(got64, ref, rtol=TOL[dtype], atol=TOL[dtype])


# ---- convolution -----------------------------------------------------------------------------

CONV_CASES = [
    # (nd, x shape, weight shape, bias, attrs)
    (1, (2, 3, 9), (4, 3, 3), True, {}),
    (1, (1, 4, 10), (6, 2, 4), False, {"stride": 2, "padding": 3, "dilation": 2, "groups": 2}),
    (1, (1, 1, 1), (2, 1, 1), True, {}),
    (1, (2, 2, 7), (2, 2, 4), True, {"padding": "same", "dilation": 2}),
    (2, (2, 3, 7, 6), (5, 3, 3, 3), True, {}),
    (2, (1, 4, 8, 9), (6, 2, 3, 2), True, {"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2], "groups": 2}),
    (2, (2, 6, 5, 5), (6, 1, 3, 3), False, {"padding": 1, "groups": 6}),  # depthwise
    (2, (1, 1, 1, 1), (3, 1, 1, 1), True, {}),  # every dim size 1
    (2, (1, 2, 6, 1), (3, 2, 3, 1), True, {"padding": "same"}),
    (2, (1, 2, 6, 5), (3, 2, 4, 2), False, {"padding": "same"}),  # even kernel: asymmetric same
    (2, (2, 3, 6, 7), (2, 3, 3, 3), True, {"padding": "valid", "stride": 3}),
    (2, (1, 2, 5, 6), (3, 2, 2, 3), True, {"padding": [[0, 2], [1, 0]], "stride": 2}),  # explicit (lo, hi)
    (3, (1, 2, 4, 5, 3), (3, 2, 2, 3, 1), True, {"padding": [1, 0, 0], "stride": [1, 2, 1]}),
    (3, (2, 4, 3, 3, 3), (4, 2, 3, 3, 3), False, {"padding": 1, "groups": 2, "dilation": [1, 1, 1]}),
]


def _torch_conv(nd):
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]

    def conv(x, w, b, stride=1, padding=0, dilation=1, groups=1):
        if isinstance(padding, list) and isinstance(padding[0], list):  # (lo, hi) pairs: pad explicitly
            pads = [p for lo_hi in reversed(padding) for p in lo_hi]
            x, padding = F.pad(x, pads), 0
        return fn(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return conv


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own note
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"conv{c[0]}d-{c[1]}-{c[2]}-{c[4]}")
def test_conv_matches_torch(case, dtype):
    nd, xs, ws, has_bias, attrs = case
    rng = np.random.default_rng(hash((xs, ws)) % 2**32)
    arrays = [rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype) if has_bias else None]
    check(f"conv{nd}d", _torch_conv(nd), arrays, dtype, attrs)


CONV_T_CASES = [
    (1, (2, 3, 5), (3, 2, 3), True, {}),
    (1, (1, 4, 6), (4, 3, 4), False, {"stride": 3, "padding": 2, "output_padding": 1, "dilation": 2, "groups": 2}),
    (1, (1, 1, 1), (1, 2, 1), True, {}),
    (2, (2, 4, 4, 3), (4, 3, 3, 3), True, {"stride": 2, "padding": 1, "output_padding": 1}),
    (2, (1, 4, 3, 5), (4, 1, 2, 3), True, {"stride": [1, 2], "padding": [0, 1], "dilation": [2, 1], "groups": 4}),
    (2, (1, 2, 1, 1), (2, 3, 4, 4), False, {"stride": 2, "padding": 1}),
    (2, (1, 2, 5, 5), (2, 2, 1, 1), True, {"stride": 3, "output_padding": [2, 0]}),
    (3, (1, 2, 3, 2, 3), (2, 3, 2, 3, 2), True,
     {"stride": [2, 1, 2], "padding": [0, 1, 1], "output_padding": [1, 0, 1]}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_T_CASES, ids=lambda c: f"convT{c[0]}d-{c[1]}-{c[2]}-{c[4]}")
def test_conv_transpose_matches_torch(case, dtype):
    nd, xs, ws, has_bias, attrs = case
    rng = np.random.default_rng(hash((xs, ws)) % 2**32)
    groups = attrs.get("groups", 1)
    arrays = [rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[1] * groups,), dtype) if has_bias else None]
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    check(f"conv_transpose{nd}d", fn, arrays, dtype, attrs)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), g=st.integers(1, 3), cg=st.integers(1, 2), og=st.integers(1, 2),
       h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 3), kw=st.integers(1, 3),
       s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2), bias=st.booleans())
def test_conv2d_and_transpose_random_geometry(n, g, cg, og, h, w, kh, kw, s, p, d, bias):
    rng = np.random.default_rng(0)
    if h + 2 * p < d * (kh - 1) + 1 or w + 2 * p < d * (kw - 1) + 1:
        with pytest.raises(GraphError, match="larger than the padded input"):
            run_kiln("conv2d", [rand(rng, (n, g * cg, h, w), "float32"), rand(rng, (g * og, cg, kh, kw), "float32")],
                     stride=s, padding=p, dilation=d, groups=g)
        return
    x = rand(rng, (n, g * cg, h, w), "float64")
    wt = rand(rng, (g * og, cg, kh, kw), "float64")
    b = rand(rng, (g * og,), "float64") if bias else None
    attrs = {"stride": s, "padding": p, "dilation": d, "groups": g}
    check("conv2d", F.conv2d, [x, wt, b], "float64", attrs)
    # the transpose of that conv maps its output shape back to (up to output_padding) the input's
    y = run_kiln("conv2d", [x, wt, b], **attrs)
    if (y.shape[2] - 1) * s - 2 * p + d * (kh - 1) + 1 >= 1 and (y.shape[3] - 1) * s - 2 * p + d * (kw - 1) + 1 >= 1:
        check("conv_transpose2d", F.conv_transpose2d, [y, wt, None], "float64", attrs)


# ---- pooling -----------------------------------------------------------------------------------

MAX_POOL_CASES = [
    (1, (2, 3, 9), {"kernel_size": 3}),
    (1, (1, 2, 10), {"kernel_size": 4, "stride": 3, "padding": 2, "dilation": 2, "ceil_mode": True}),
    (2, (2, 3, 7, 6), {"kernel_size": 2}),
    (2, (1, 2, 7, 8), {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 1]}),
    (2, (1, 1, 8, 7), {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True}),
    (2, (1, 2, 5, 5), {"kernel_size": 2, "stride": 2, "ceil_mode": True}),
    (2, (1, 1, 1, 1), {"kernel_size": 1}),
    (3, (1, 2, 4, 5, 6), {"kernel_size": [2, 3, 2], "stride": [1, 2, 2], "padding": [1, 1, 0], "ceil_mode": True}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=lambda c: f"max{c[0]}d-{c[1]}-{c[2]}")
def test_max_pool_matches_torch(case, dtype):
    nd, xs, attrs = case
    x = rand(np.random.default_rng(nd), xs, dtype)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    check(f"max_pool{nd}d", fn, [x], dtype, attrs, exact=True)  # a max is exact in any dtype


AVG_POOL_CASES = [
    (1, (2, 3, 9), {"kernel_size": 3}),
    (1, (1, 2, 10), {"kernel_size": 4, "stride": 3, "padding": 2, "ceil_mode": True, "count_include_pad": False}),
    (2, (2, 3, 7, 6), {"kernel_size": 2}),
    (2, (1, 2, 7, 8), {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 1]}),
    (2, (1, 2, 7, 8), {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 1], "count_include_pad": False}),
    (2, (1, 1, 8, 7), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    (2, (1, 1, 8, 7), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}),
    (2, (1, 2, 5, 5), {"kernel_size": 2, "stride": 2, "ceil_mode": True, "divisor_override": 3}),
    (2, (1, 1, 1, 1), {"kernel_size": 1}),
    (3, (1, 2, 4, 5, 6), {"kernel_size": [2, 3, 2], "stride": [1, 2, 2], "padding": [1, 1, 0], "ceil_mode": True}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=lambda c: f"avg{c[0]}d-{c[1]}-{c[2]}")
def test_avg_pool_matches_torch(case, dtype):
    nd, xs, attrs = case
    x = rand(np.random.default_rng(nd), xs, dtype)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    if nd == 1:  # torch's avg_pool1d has no divisor_override
        assert "divisor_override" not in attrs
    check(f"avg_pool{nd}d", fn, [x], dtype, attrs)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       s=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2), ceil=st.booleans(), incl=st.booleans())
def test_pool2d_random_geometry(h, w, kh, kw, s, ph, pw, ceil, incl):
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    x = rand(np.random.default_rng(0), (1, 2, h, w), "float64")
    attrs = {"kernel_size": [kh, kw], "stride": s, "padding": [ph, pw], "ceil_mode": ceil}
    try:
        ref = F.max_pool2d(torch.from_numpy(x), **attrs)
    except RuntimeError:  # torch refuses a window that does not fit; kiln must refuse it too
        with pytest.raises(GraphError, match="larger than the padded input"):
            run_kiln("max_pool2d", [x], **attrs)
        return
    np.testing.assert_array_equal(run_kiln("max_pool2d", [x], **attrs), ref.numpy())
    check("avg_pool2d", F.avg_pool2d, [x], "float64", {**attrs, "count_include_pad": incl})


ADAPTIVE_CASES = [
    (1, (2, 3, 10), 4),
    (1, (1, 2, 3), 7),  # more outputs than inputs: overlapping bins
    (2, (2, 3, 7, 6), [3, 4]),
    (2, (1, 2, 5, 9), 1),  # global average pool
    (2, (1, 1, 6, 5), [None, 2]),  # None keeps that dim
    (2, (1, 1, 1, 1), [2, 3]),
    (3, (1, 2, 4, 5, 7), [2, 3, 3]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=lambda c: f"adaptive{c[0]}d-{c[1]}-{c[2]}")
def test_adaptive_avg_pool_matches_torch(case, dtype):
    nd, xs, out = case
    x = rand(np.random.default_rng(nd), xs, dtype)
    fn = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[nd]
    check(f"adaptive_avg_pool{nd}d", fn, [x], dtype, {"output_size": out})


# ---- resampling --------------------------------------------------------------------------------

INTERP_CASES = [
    ((2, 3, 5, 7), {"size": [9, 4], "mode": "nearest"}),
    ((1, 2, 5, 7), {"scale_factor": 2.0, "mode": "nearest"}),
    ((1, 2, 5, 7), {"scale_factor": [1.7, 0.6], "mode": "nearest"}),
    ((2, 2, 3), {"scale_factor": 1.3, "mode": "nearest"}),  # out == in, yet torch maps with 1/1.3
    ((1, 2, 7, 5), {"scale_factor": 2.1, "mode": "nearest-exact"}),
    ((1, 2, 7, 5), {"size": [3, 11], "mode": "nearest-exact"}),
    ((2, 3, 5, 7), {"size": [9, 4], "mode": "bilinear", "align_corners": False}),
    ((2, 3, 5, 7), {"size": [9, 4], "mode": "bilinear", "align_corners": True}),
    ((1, 2, 5, 7), {"scale_factor": [1.7, 0.6], "mode": "bilinear", "align_corners": False}),
    ((1, 2, 5, 7), {"scale_factor": [1.7, 0.6], "mode": "bilinear", "recompute_scale_factor": True}),
    ((1, 2, 5, 7), {"scale_factor": 2.5, "mode": "bilinear", "align_corners": True}),
    ((1, 2, 3, 5), {"scale_factor": 1.3, "mode": "bilinear"}),  # out == in: torch copies
    ((1, 1, 1, 1), {"size": [3, 1], "mode": "bilinear", "align_corners": True}),
    ((1, 1, 4, 1), {"size": [1, 5], "mode": "bilinear", "align_corners": False}),
    ((2, 3, 6), {"scale_factor": 0.5, "mode": "linear"}),
    ((2, 3, 6), {"size": 13, "mode": "nearest"}),
    ((1, 2, 3, 4, 5), {"size": [5, 2, 7], "mode": "trilinear", "align_corners": True}),
    ((1, 2, 3, 4, 5), {"scale_factor": [1.5, 2.0, 0.7], "mode": "nearest"}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", INTERP_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_interpolate_matches_torch(case, dtype):
    xs, attrs = case
    x = rand(np.random.default_rng(len(xs)), xs, dtype)
    nearest = attrs["mode"].startswith("nearest")
    check("interpolate", F.interpolate, [x], dtype, attrs, exact=nearest)  # nearest is a pure gather


def test_interpolate_index_rule_over_many_sizes():
    """Source indices and weights exactly as torch computes them, on a sweep of sizes and scales."""
    for n_in in (1, 2, 3, 7, 31, 97, 180):
        x = np.eye(n_in)[:, None, :]  # row i of the output weight matrix = weights on input i
        for kw in [{"size": o} for o in (1, 2, 5, 64, 301)] + [{"scale_factor": s} for s in (0.37, 1.3, 2.1, 4.251)]:
            for mode, ac in (("nearest", None), ("nearest-exact", None), ("linear", False), ("linear", True)):
                if kw.get("scale_factor", 1) * n_in < 1:
                    continue
                for dt in (np.float32, np.float64):
                    got = run_kiln("interpolate", [x.astype(dt)], mode=mode, align_corners=ac, **kw)
                    ref = F.interpolate(torch.from_numpy(x.astype(dt)), mode=mode, align_corners=ac, **kw)
                    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6 if dt == np.float32 else 1e-12,
                                               err_msg=f"{n_in} {kw} {mode} {ac} {dt}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,r", [((2, 8, 3, 5), 2), ((3, 2, 9, 2, 1), 3), ((1, 1, 1), 1), ((4, 2, 2), 2)])
def test_pixel_shuffle_matches_torch(shape, r, dtype):
    x = rand(np.random.default_rng(0), shape, dtype)
    check("pixel_shuffle", F.pixel_shuffle, [x], dtype, {"upscale_factor": r}, exact=True)
    y = run_kiln("pixel_shuffle", [x], upscale_factor=r)
    check("pixel_unshuffle", F.pixel_unshuffle, [y], dtype, {"downscale_factor": r}, exact=True)
    np.testing.assert_array_equal(run_kiln("pixel_unshuffle", [y], downscale_factor=r), x)


# ---- bad input: named errors -------------------------------------------------------------------

def _build(op, shapes, dtypes=None, **attrs):
    g = kiln.Graph()
    dtypes = dtypes or ["float32"] * len(shapes)
    vals = [None if s is None else g.input(f"in{i}", s, dt) for i, (s, dt) in enumerate(zip(shapes, dtypes))]
    return g.op(op, *vals, **attrs)


@pytest.mark.parametrize("op,shapes,dtypes,attrs,match", [
    ("conv2d", [(1, 3, 8, 8), (4, 2, 3, 3)], None, {}, r"x has 3 channels but weight \(4, 2, 3, 3\) expects 2"),
    ("conv2d", [(1, 4, 8, 8), (6, 2, 3, 3)], None, {"groups": 3}, r"groups=3 must divide"),
    ("conv2d", [(1, 4, 8, 8), (5, 2, 3, 3)], None, {"groups": 2}, r"groups=2 must divide.*5 output channels"),
    ("conv2d", [(1, 2, 3, 3), (4, 2, 5, 5)], None, {"padding": 0}, r"larger than the padded input size 3"),
    ("conv1d", [(1, 2, 4), (4, 2, 3)], None, {"dilation": 3}, r"\(dilated\) size 7 .* larger than the padded input"),
    ("conv2d", [(2, 8, 8), (4, 2, 3, 3)], None, {}, r"'conv2d': x must have rank 4"),
    ("conv3d", [(1, 2, 4, 4, 4), (4, 2, 3, 3)], None, {}, r"weight must have rank 5"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], ["float32", "float16"], {}, r"'weight' has dtype float16"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3), (3,)], None, {}, r"bias must have shape \(4,\)"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], ["int32", "int32"], {}, r"'x' must be a float tensor"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], None, {"padding": "same", "stride": 2}, r"'same' needs stride 1"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], None, {"padding": "full"}, r"padding must be an int"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], None, {"stride": [1, 2, 3]}, r"'stride' must be an int or a list of 2"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], None, {"stride": 0}, r"'stride' must be >= 1"),
    ("conv2d", [(1, 2, 8, 8), (4, 2, 3, 3)], None, {"padding": [[1, -1], [0, 0]]}, r"non-negative \(lo, hi\)"),
    ("conv_transpose2d", [(1, 3, 4, 4), (4, 2, 3, 3)], None, {}, r"x has 3 channels but weight .* expects 4"),
    ("conv_transpose2d", [(1, 4, 4, 4), (4, 2, 3, 3)], None, {"groups": 3}, r"groups=3 must divide"),
    ("conv_transpose2d", [(1, 4, 4, 4), (4, 2, 3, 3)], None, {"stride": 2, "output_padding": 2},
     r"output_padding \[2, 2\] must be smaller than either stride"),
    ("conv_transpose2d", [(1, 4, 1, 1), (4, 2, 1, 1)], None, {"padding": 1}, r"output size -1 .* not positive"),
    ("max_pool2d", [(1, 2, 5, 5)], None, {"kernel_size": 3, "padding": 2}, r"at most half of kernel_size"),
    ("max_pool2d", [(1, 2, 2, 5)], None, {"kernel_size": 3}, r"larger than the padded input size 2"),
    ("max_pool2d", [(2, 5, 5)], None, {"kernel_size": 3}, r"x must have rank 4"),
    ("avg_pool2d", [(1, 2, 5, 5)], None, {"kernel_size": 2, "divisor_override": 0}, r"divisor_override"),
    ("adaptive_avg_pool2d", [(1, 2, 5, 5)], None, {"output_size": [0, 2]}, r"'output_size' must be >= 1"),
    ("adaptive_avg_pool2d", [(1, 2, 5)], None, {"output_size": 2}, r"x must have rank 4"),
    ("interpolate", [(1, 2, 5, 5)], None, {"size": 3, "scale_factor": 2.0}, r"exactly one of size and scale_factor"),
    ("interpolate", [(1, 2, 5, 5)], None, {}, r"exactly one of size and scale_factor"),
    ("interpolate", [(1, 2, 5, 5)], None, {"size": 3, "mode": "linear"}, r"mode 'linear' needs a rank-3 x"),
    ("interpolate", [(1, 2, 5, 5)], None, {"size": 3, "mode": "bicubic"}, r"mode must be one of"),
    ("interpolate", [(1, 2, 5, 5)], None, {"size": 3, "align_corners": True}, r"align_corners"),
    ("interpolate", [(1, 2, 5, 5)], None, {"scale_factor": 0.1}, r"gives an empty output"),
    ("interpolate", [(1, 2, 5, 5)], None, {"size": [3, 3, 3]}, r"'size' must be an int or a list of 2"),
    ("interpolate", [(2, 5)], None, {"size": 3}, r"x must have rank 3, 4 or 5"),
    ("pixel_shuffle", [(1, 6, 2, 2)], None, {"upscale_factor": 2}, r"6 channels are not divisible by .* 4"),
    ("pixel_unshuffle", [(1, 1, 4, 3)], None, {"downscale_factor": 2}, r"width 3 must be divisible"),
])
def test_bad_input_raises_named_error(op, shapes, dtypes, attrs, match):
    with pytest.raises(GraphError, match=match):
        _build(op, shapes, dtypes, **attrs)


def test_conv_graph_survives_json_roundtrip():
    """Padding pairs, 'same' and per-dim lists are plain JSON attributes."""
    g = kiln.Graph()
    x = g.input("x", (1, 2, 6, 5))
    w = g.parameter("w", (3, 2, 3, 2))
    y = g.conv2d(x, w, padding=[[0, 2], [1, 0]], stride=(2, 1))
    z = g.interpolate(g.conv2d(y, g.parameter("w2", (3, 3, 2, 2)), padding="same"), scale_factor=[1.5, 2.0],
                      mode="bilinear", align_corners=False)
    g.output("z", g.max_pool2d(z, kernel_size=2, ceil_mode=True))
    g2 = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    rng = np.random.default_rng(0)
    params = {"w": rand(rng, (3, 2, 3, 2), "float32"), "w2": rand(rng, (3, 3, 2, 2), "float32")}
    xv = rand(rng, (1, 2, 6, 5), "float32")
    outs = []
    for graph in (g, g2):
        cg = kiln.compile(graph)
        cg.load_params(params)
        outs.append(cg.run(x=xv)["z"])
    np.testing.assert_array_equal(outs[0], outs[1])
    t = F.pad(torch.from_numpy(xv), (1, 0, 0, 2))
    t = F.conv2d(t, torch.from_numpy(params["w"]), stride=(2, 1))
    t = F.conv2d(t, torch.from_numpy(params["w2"]), padding="same")
    t = F.max_pool2d(F.interpolate(t, scale_factor=[1.5, 2.0], mode="bilinear"), 2, ceil_mode=True)
    np.testing.assert_allclose(outs[0], t.numpy(), rtol=1e-5, atol=1e-5)
