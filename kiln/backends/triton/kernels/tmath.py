"""Device math helpers shared by generated and hand-written kernels.

Why not libdevice: Triton's CPU interpreter (TRITON_INTERPRET=1, how the tests run) does not
implement libdevice, so tanh and pow are written from exp/log here, accurate to a few ulp in
float32, and the same code runs on the GPU and in the interpreter.
"""

import triton
import triton.language as tl

try:   # grid dependency control (programmatic dependent launch); builds without it never launch early
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_GDC = True
except ImportError:
    gdc_launch_dependents = gdc_wait = None
    HAS_GDC = False


@triton.jit
def enter_after_previous(PDL: tl.constexpr):
    """At a kernel's entry, launched early (programmatic dependent launch): let the next kernel
    launch, then wait until the previous one's writes are visible. Without PDL, nothing."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def online_max_sum(mx, s, v, m):
    """One chunk of a chunked softmax, lane by lane: the running max `mx` and sum `s` of
    exp(x - max) updated with values `v` (masked lanes, `m` False, hold -inf)."""
    new = tl.maximum(mx, v)
    new_safe = tl.where(new == float("-inf"), 0.0, new)
    s = s * tl.exp(mx - new_safe) + tl.where(m, tl.exp(v - new_safe), 0.0)
    return new, s


@triton.jit
def lanes_max_sum(mx, s):
    """The row's max (0 for a row of -inf) and sum of exp(x - max) from `online_max_sum`'s lanes."""
    gmax = tl.max(mx, 0)
    gmax_safe = tl.where(gmax == float("-inf"), 0.0, gmax)
    return gmax_safe, tl.sum(s * tl.exp(mx - gmax_safe), 0)


@triton.jit
def tanh(x):
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    big = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = ax * (1.0 - x2 * (0.3333333333333333 - x2 * 0.13333333333333333))  # series, |x| < 0.01
    r = tl.where(ax < 0.01, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def pow(a, b):
    # exp(b * log|a|) with NumPy's sign and zero rules: negative bases need integer exponents.
    mag = tl.exp(b * tl.log(tl.abs(a)))
    is_int = b == tl.floor(b)
    odd = is_int & ((tl.abs(b) % 2.0) == 1.0)
    r = tl.where((a < 0) & odd, -mag, mag)
    r = tl.where((a < 0) & (~is_int), float("nan"), r)
    return tl.where(b == 0, 1.0, r)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def gelu_tanh(x):
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def activation(y, ACT: tl.constexpr):
    """The matmul epilogue's activations, by name (a constexpr, so the branch is compiled away)."""
    if ACT == "silu":
        y = y * sigmoid(y)
    elif ACT == "gelu":
        y = gelu(y)
    elif ACT == "gelu_tanh":
        y = gelu_tanh(y)
    elif ACT == "relu":
        y = tl.where(y < 0, 0.0, y)
    return y


@triton.jit
def mma(a, b, IEEE: tl.constexpr, INTERP: tl.constexpr):
    """a @ b accumulated in float32. IEEE: exact float32 products (no TF32). INTERP: the CPU
    interpreter multiplies half types wrongly, so it gets float32 operands."""
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def row_norm_stats(a_rows, sak, mmask, K, eps, NORM: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """(mean, rstd) of each of BM rows over all K columns, for a matmul's norm prologue (`a_rows`:
    [BM, 1] row pointers; rms_norm: mean 0)."""
    rk = tl.arange(0, BK)
    s1 = tl.zeros([BM], tl.float32)
    s2 = tl.zeros([BM], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        t = tl.load(a_rows + kk[None, :] * sak, mask=mmask[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)
        s1 += tl.sum(t, 1)
        s2 += tl.sum(t * t, 1)
    return norm_from_sums(s1, s2, K, eps, NORM)


@triton.jit
def tile_norm_stats(x, K, eps, NORM: tl.constexpr):
    """`row_norm_stats` of a [BM, BK] tile that already holds all K columns of its rows (zeros past
    K): one read of A instead of two."""
    t = x.to(tl.float32)
    return norm_from_sums(tl.sum(t, 1), tl.sum(t * t, 1), K, eps, NORM)


@triton.jit
def norm_from_sums(s1, s2, K, eps, NORM: tl.constexpr):
    if NORM == "rms_norm":
        mean = tl.zeros_like(s1)
        rstd = 1.0 / tl.sqrt(s2 / K + eps)
    else:
        mean = s1 / K
        rstd = 1.0 / tl.sqrt(tl.maximum(s2 / K - mean * mean, 0.0) + eps)
    return mean, rstd


@triton.jit
def norm_tile(x, mean, rstd, nw, nb, kk, kmask, UNIT_OFFSET: tl.constexpr, HAS_NORM_BIAS: tl.constexpr):
    """A [BM, BK] tile of A normalized with its rows' statistics and the norm's weight (and bias), float32."""
    t = (x.to(tl.float32) - mean[:, None]) * rstd[:, None]
    wv = tl.load(nw + kk, mask=kmask, other=0.0).to(tl.float32)
    if UNIT_OFFSET:
        wv = wv + 1.0
    t = t * wv[None, :]
    if HAS_NORM_BIAS:
        t = t + tl.load(nb + kk, mask=kmask, other=0.0).to(tl.float32)[None, :]
    return t


@triton.jit
def epilogue_activation(y, up, ACT: tl.constexpr, GATED: tl.constexpr):
    """A matmul epilogue's activation: act(y), or act(gate) * up for the gated ones (up unused otherwise)."""
    if GATED:
        if ACT == "swiglu":
            y = y * sigmoid(y) * up
        elif ACT == "geglu":
            y = gelu(y) * up
        else:
            y = gelu_tanh(y) * up
    else:
        y = activation(y, ACT)
    return y
