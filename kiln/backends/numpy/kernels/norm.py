"""Normalization kernels, computed in float32 for half inputs."""

from __future__ import annotations

import numpy as np

from ._registry import kernel, up


@kernel("layer_norm")
def _layer_norm(x, weight=None, bias=None, eps=1e-5):
    xf = up(x)
    mu = xf.mean(-1, keepdims=True)
    var = np.square(xf - mu).mean(-1, keepdims=True)
    y = (xf - mu) / np.sqrt(var + np.asarray(eps, xf.dtype))
    if weight is not None:
        y = y * up(weight)
    if bias is not None:
        y = y + up(bias)
    return y.astype(x.dtype, copy=False)


@kernel("rms_norm")
def _rms_norm(x, weight=None, eps=1e-6, add_unit_offset=False):
    xf = up(x)
    y = xf / np.sqrt(np.square(xf).mean(-1, keepdims=True) + np.asarray(eps, xf.dtype))
    if weight is not None:
        w = up(weight)
        y = y * (1 + w if add_unit_offset else w)
    return y.astype(x.dtype, copy=False)


@kernel("group_norm")
def _group_norm(x, weight=None, bias=None, num_groups=1, eps=1e-5):
    xf = up(x)
    n, c = xf.shape[:2]
    g = xf.reshape(n, num_groups, -1)
    mu = g.mean(-1, keepdims=True)
    var = np.square(g - mu).mean(-1, keepdims=True)
    y = ((g - mu) / np.sqrt(var + np.asarray(eps, xf.dtype))).reshape(xf.shape)
    bshape = (1, c) + (1,) * (xf.ndim - 2)
    if weight is not None:
        y = y * up(weight).reshape(bshape)
    if bias is not None:
        y = y + up(bias).reshape(bshape)
    return y.astype(x.dtype, copy=False)
