"""attention and rope against torch.

attention: torch's scaled_dot_product_attention with an explicit bool mask built from tril/triu
(bottom-right aligned, as in KV-cache decode), and an explicit torch softmax implementation where
SDPA has no equivalent (softcap). rope: the HF-style reference, cos/sin from position_ids * inv_freq,
`rotate_half` for "half" and GPT-J's rotate-every-two for "interleaved".
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from harness import FLOATS, check, rand, to_numpy

TESTED_OPS = {"attention", "rope"}


# ---- attention ----------------------------------------------------------------------

def allowed_positions(sq: int, sk: int, causal: bool, window):
    """[Sq, Sk] bool: query i sits at key position i + (Sk - Sq), the last query sees the last key."""
    off = sk - sq
    ones = torch.ones(sq, sk, dtype=torch.bool)
    allowed = ones.clone()
    if causal:
        allowed &= ones.tril(diagonal=off)
    if window is not None:
        allowed &= ones.triu(diagonal=off - window + 1)  # at most window-1 keys back
        if not causal:
            allowed &= ones.tril(diagonal=off + window - 1)  # and window-1 keys ahead
    return allowed


def combined_mask(q, k, mask, causal, window):
    """One SDPA attn_mask: the user mask (bool or additive) with causal/window positions applied."""
    allowed = allowed_positions(q.shape[2], k.shape[2], causal, window)
    if mask is None:
        return allowed
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, float("-inf"))


def sdpa_reference(q, k, v, mask=None, *, causal=False, scale=None, window=None):
    m = combined_mask(q, k, mask, causal, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=True)


def explicit_reference(q, k, v, mask=None, *, causal=False, scale=None, window=None, softcap=None):
    """softmax(softcap * tanh(q k^T * scale / softcap) + mask) v, written out (SDPA has no softcap)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    m = combined_mask(q, k, mask, causal, window)
    s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with nothing to attend to gives zeros
    return p @ v


SHAPES = {  # B, Hq, Hk, Sq, Sk, D, Dv
    "self": (2, 2, 2, 5, 5, 8, 8),
    "decode1": (1, 4, 4, 1, 7, 8, 8),
    "prefill_chunk": (2, 2, 2, 3, 6, 4, 4),
    "gqa": (1, 6, 2, 4, 4, 8, 8),
    "gqa_decode": (2, 4, 1, 2, 9, 4, 6),
    "more_q_than_k": (1, 2, 2, 6, 4, 4, 4),  # early queries see no key under causal
}
CONFIGS = {  # attrs plus which mask to build
    "full": dict(),
    "causal": dict(causal=True),
    "window": dict(causal=True, window=3),
    "window_bidirectional": dict(window=2),
    "bool_mask": dict(mask="bool"),
    "float_mask_causal": dict(mask="float", causal=True),
    "scale": dict(scale=0.3),
    "bool_mask_window_scale": dict(mask="bool", window=4, causal=True, scale=0.5),
}
MASK_SHAPES = ("full", "2d", "heads_broadcast")


def _make_mask(rng, kind, which, b, h, sq, sk, dtype):
    shape = {"full": (b, h, sq, sk), "2d": (sq, sk), "heads_broadcast": (b, 1, 1, sk)}[which]
    if kind == "bool":
        m = rng.random(shape) < 0.7
        m[..., -1] = True  # every query keeps at least one key
        return m
    m = rng.standard_normal(shape)
    m[rng.random(shape) < 0.3] = -np.inf
    m[..., -1] = 0.0
    return m.astype(kiln.as_dtype(dtype).np_dtype)


def _attention_case(rng, dtype, shape, cfg, mask_shape="full"):
    b, hq, hk, sq, sk, d, dv = shape
    q, k, v = rand(rng, (b, hq, sq, d), dtype), rand(rng, (b, hk, sk, d), dtype), rand(rng, (b, hk, sk, dv), dtype)
    attrs = {n: cfg[n] for n in ("causal", "scale", "window", "softcap") if n in cfg}
    mask = _make_mask(rng, cfg["mask"], mask_shape, b, hq, sq, sk, dtype) if "mask" in cfg else None
    return [q, k, v, mask], attrs


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_attention_vs_sdpa(dtype, shape, cfg, rng):
    inputs, attrs = _attention_case(rng, dtype, SHAPES[shape], CONFIGS[cfg])
    check("attention", inputs, lambda q, k, v, m: sdpa_reference(q, k, v, m, **attrs), **attrs)


@pytest.mark.parametrize("mask_shape", MASK_SHAPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_mask_broadcasting(dtype, kind, mask_shape, rng):
    inputs, attrs = _attention_case(rng, dtype, SHAPES["gqa_decode"], {"mask": kind}, mask_shape)
    check("attention", inputs, lambda q, k, v, m: sdpa_reference(q, k, v, m, **attrs), **attrs)


@pytest.mark.parametrize("extra", [{}, {"causal": True}, {"causal": True, "window": 2}, {"mask": "float", "scale": 0.2}])
@pytest.mark.parametrize("shape", ["self", "gqa_decode", "prefill_chunk"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_attention_softcap(dtype, shape, extra, rng):
    """Gemma-2 style logit softcapping: a small cap, so tanh visibly bends the scores."""
    cfg = {"softcap": 1.5, **extra}
    inputs, attrs = _attention_case(rng, dtype, SHAPES[shape], cfg)
    inputs[0] = inputs[0] * np.asarray(3, inputs[0].dtype)  # larger scores, deeper into tanh
    check("attention", inputs, lambda q, k, v, m: explicit_reference(q, k, v, m, **attrs), **attrs)


@pytest.mark.parametrize("cfg", ["causal", "window", "window_bidirectional", "float_mask_causal"])
def test_explicit_reference_agrees_with_sdpa(cfg, rng):
    """The softcap reference is only trusted because it matches SDPA where both apply."""
    inputs, attrs = _attention_case(rng, "float64", SHAPES["gqa_decode"], CONFIGS[cfg])
    t = [None if a is None else torch.from_numpy(a) for a in inputs]
    torch.testing.assert_close(explicit_reference(*t, **attrs), sdpa_reference(*t, **attrs))


def test_attention_query_without_keys_outputs_zeros(rng):
    inputs, attrs = _attention_case(rng, "float32", SHAPES["more_q_than_k"], CONFIGS["causal"])
    out = check("attention", inputs, lambda q, k, v, m: sdpa_reference(q, k, v, m, **attrs), **attrs)
    assert np.all(out[:, :, :2] == 0) and np.all(out[:, :, 2:] != 0)


def test_attention_errors_name_shapes():
    g = kiln.Graph()
    q = g.input("q", (1, 4, 3, 8), "float32")
    k, v = g.input("k", (1, 3, 5, 8), "float32"), g.input("v", (1, 3, 5, 8), "float32")
    with pytest.raises(kiln.GraphError, match="4 query heads are not a multiple of 3"):
        g.attention(q, k, v)
    k2, v2 = g.input("k2", (1, 2, 5, 8), "float32"), g.input("v2", (1, 2, 5, 8), "float32")
    with pytest.raises(kiln.GraphError, match=r"mask bool\[3, 4\] does not broadcast.*\(1, 4, 3, 5\)"):
        g.attention(q, k2, v2, g.input("m", (3, 4), "bool"))
    with pytest.raises(kiln.GraphError, match="mask must be bool or float32"):
        g.attention(q, k2, v2, g.input("mh", (3, 5), "float16"))
    with pytest.raises(kiln.GraphError, match="window must be >= 1"):
        g.attention(q, k2, v2, window=0)
    with pytest.raises(kiln.GraphError, match="'k' has dtype float16"):
        g.attention(q, g.input("kh", (1, 2, 5, 8), "float16"), v2)
    with pytest.raises(kiln.GraphError, match="rank 4"):
        g.attention(g.input("q3", (4, 3, 8), "float32"), k2, v2)
    with pytest.raises(kiln.GraphError, match="matching B"):
        g.attention(q, g.input("k6", (1, 2, 5, 6), "float32"), v2)


# ---- rope ------------------------------------------------------------------------------

def cos_sin(position_ids: torch.Tensor, rot: int, base: float = 10000.0):
    """HF Llama's rotary frequencies: angles = position_ids * inv_freq, [B, S, rot/2] in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
    freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]
    return freqs.cos(), freqs.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rope_reference(x, cos, sin, layout):
    rot = 2 * cos.shape[-1]
    if layout == "half":  # HF: emb = cat(freqs, freqs)
        c, s = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]
        rotate = rotate_half
    else:  # GPT-J: each angle serves an adjacent pair
        c, s = cos.repeat_interleave(2, -1)[:, None], sin.repeat_interleave(2, -1)[:, None]
        rotate = rotate_every_two
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * c + rotate(x_rot) * s, x_pass), dim=-1)


ROPE_CASES = {  # B, H, S, D, rot, positions
    "prefill": (2, 3, 5, 8, 8, "arange"),
    "decode_at_offset": (2, 2, 1, 8, 8, "offset"),
    "partial_rotary": (1, 2, 4, 16, 4, "offset"),
    "half_of_dims": (2, 1, 3, 12, 6, "random"),
    "shared_positions": (3, 2, 4, 8, 8, "shared"),
}


def _positions(rng, kind, b, s):
    if kind == "arange":
        return np.broadcast_to(np.arange(s), (b, s)).copy()
    if kind == "offset":  # each sequence has its own KV-cache length
        return np.arange(s)[None, :] + rng.integers(0, 50, (b, 1))
    if kind == "shared":
        return np.arange(s)[None, :] + 7
    return rng.integers(0, 2000, (b, s))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("case", sorted(ROPE_CASES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_rope(dtype, case, layout, rng):
    b, h, s, d, rot, kind = ROPE_CASES[case]
    pos = torch.from_numpy(_positions(rng, kind, b, s))
    cos, sin = cos_sin(pos, rot)
    x = rand(rng, (b, h, s, d), dtype)
    check("rope", [x, to_numpy(cos, dtype), to_numpy(sin, dtype)],
          lambda tx, tc, ts: rope_reference(tx, tc, ts, layout), layout=layout)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_matches_transformers_llama(layout, rng):
    """The reference itself agrees with transformers' apply_rotary_pos_emb (layout 'half') and
    with pairs rotated as complex numbers (layout 'interleaved', original Llama)."""
    pos = torch.from_numpy(_positions(rng, "offset", 2, 4))
    cos, sin = cos_sin(pos, 8)
    x = torch.from_numpy(rand(rng, (2, 3, 4, 8), "float64"))
    if layout == "half":
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        want, _ = apply_rotary_pos_emb(x, x, torch.cat((cos, cos), -1).double(), torch.cat((sin, sin), -1).double())
    else:
        z = torch.view_as_complex(x.reshape(2, 3, 4, 4, 2).contiguous())
        want = torch.view_as_real(z * torch.complex(cos, sin).to(torch.complex128)[:, None]).flatten(-2)
    torch.testing.assert_close(rope_reference(x, cos.double(), sin.double(), layout), want)


def test_rope_errors():
    g = kiln.Graph()
    x = g.input("x", (2, 2, 4, 8), "float32")
    c, s = g.input("c", (2, 4, 4), "float32"), g.input("s", (2, 4, 4), "float32")
    with pytest.raises(kiln.GraphError, match="layout must be 'half' or 'interleaved'"):
        g.rope(x, c, s, layout="neox")
    c5 = g.input("c5", (2, 4, 5), "float32")
    with pytest.raises(kiln.GraphError, match=r"rotary dims 10 must be in 1..8"):
        g.rope(x, c5, c5)
    c3 = g.input("c3", (2, 3, 4), "float32")
    with pytest.raises(kiln.GraphError, match="S=4"):
        g.rope(x, c3, c3)
    with pytest.raises(kiln.GraphError, match="'cos' has dtype float16"):
        g.rope(x, g.input("ch", (2, 4, 4), "float16"), s)
