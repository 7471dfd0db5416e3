"""Scaled dot-product attention (masks, GQA, sliding window, softcap) and rotary embeddings."""

from __future__ import annotations

import numpy as np

from ..dtypes import bool_
from ..errors import GraphError
from ..op_spec import OpSpec, register_op
from ..shapes import broadcast_shapes
from ._rules import expect_float, expect_rank, expect_same_dtype, tt


def allowed_positions(sq: int, sk: int, causal: bool, window: int | None) -> "np.ndarray | None":
    """[Sq, Sk] bool: True where query i (at key position i + sk - sq) may attend to key j."""
    if not causal and window is None:
        return None
    qpos = np.arange(sq)[:, None] + (sk - sq)
    kpos = np.arange(sk)[None, :]
    allowed = np.ones((sq, sk), bool)
    if causal:
        allowed &= kpos <= qpos
    if window is not None:
        allowed &= qpos - kpos < window
        if not causal:
            allowed &= kpos - qpos < window
    return allowed


def _attention(types, attrs):
    q, k, v, mask = types
    for n, t in (("q", q), ("k", k), ("v", v)):
        expect_rank("attention", n, t, 4)
        expect_float("attention", n, t)
    expect_same_dtype("attention", {"q": q, "k": k, "v": v})
    b, hq, sq, d = q.shape
    bk, hk, sk, dk = k.shape
    if (bk, dk) != (b, d) or v.shape[:3] != (b, hk, sk):
        raise GraphError(f"op 'attention': q {q}, k {k}, v {v} must be [B, H, S, D] with matching B, "
                         f"k/v heads and key length, and k's D equal to q's")
    if hk == 0 or hq % hk:
        raise GraphError(f"op 'attention': {hq} query heads are not a multiple of {hk} key/value heads")
    if mask is not None:
        if mask.dtype != bool_ and mask.dtype != q.dtype:
            raise GraphError(f"op 'attention': mask must be bool or {q.dtype} (additive), got {mask}")
        try:
            if broadcast_shapes(mask.shape, (b, hq, sq, sk)) != (b, hq, sq, sk):
                raise GraphError("")
        except GraphError:
            raise GraphError(f"op 'attention': mask {mask} does not broadcast to [B, H, Sq, Sk] = "
                             f"{(b, hq, sq, sk)}") from None
    if attrs["window"] is not None and attrs["window"] < 1:
        raise GraphError(f"op 'attention': window must be >= 1, got {attrs['window']}")
    return tt((b, hq, sq, v.shape[3]), q.dtype)


register_op(OpSpec(
    "attention", "attention", ("q", "k", "v", "mask?"), _attention,
    attrs={"causal": False, "scale": None, "window": None, "softcap": None},
    doc="softmax(q k^T * scale [+ mask]) v. Causal and window masks align the last query with the "
        "last key (query i sits at key position i + Sk - Sq). A bool mask is True where attending "
        "is allowed; a float mask is added to the scores. GQA repeats each k/v head Hq/Hk times."))


def _rope(types, attrs):
    x, cos, sin = types
    expect_rank("rope", "x", x, 4)
    expect_float("rope", "x", x)
    expect_same_dtype("rope", {"x": x, "cos": cos, "sin": sin})
    b, h, s, d = x.shape
    if cos.shape != sin.shape or cos.rank != 3 or cos.shape[1] != s or cos.shape[0] not in (1, b):
        raise GraphError(f"op 'rope': cos/sin must be [B or 1, S, rot/2] with S={s}, got {cos} and {sin}")
    rot = 2 * cos.shape[2]
    if rot == 0 or rot > d:
        raise GraphError(f"op 'rope': rotary dims {rot} must be in 1..{d} (head dim of {x})")
    if attrs["layout"] not in ("half", "interleaved"):
        raise GraphError(f"op 'rope': layout must be 'half' or 'interleaved', got {attrs['layout']!r}")
    return x


register_op(OpSpec(
    "rope", "layout", ("x", "cos", "sin"), _rope, attrs={"layout": "half"},
    doc="Rotary embedding of x [B, H, S, D] with cos/sin [B|1, S, rot/2] computed from explicit "
        "position ids; the first `rot` dims rotate, the rest pass through. 'half' pairs i with "
        "i + rot/2 (HF Llama), 'interleaved' pairs 2i with 2i + 1 (original Llama / GPT-J)."))
