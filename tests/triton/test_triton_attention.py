"""Attention archetype: flash forward and split-KV decode kernels vs the NumPy reference."""

import numpy as np
import pytest

from helpers import check, randn
from kiln.ir import Graph

CASES = {
    # name: (B, Hq, Hk, Sq, Sk, D, attrs, mask)
    "causal_gqa": (1, 4, 2, 20, 20, 16, dict(causal=True), None),
    "full_bool_mask": (2, 2, 2, 17, 9, 8, dict(), "bool"),
    "window_softcap": (1, 2, 1, 19, 19, 16, dict(causal=True, window=5, softcap=3.0), None),
    "window_noncausal_additive": (1, 3, 3, 18, 23, 8, dict(window=4, scale=0.3), "add"),
    "decode_gqa_split": (2, 6, 2, 1, 70, 16, dict(), "bool"),
    "decode_causal_window": (1, 4, 1, 3, 40, 8, dict(causal=True, window=9), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_lse_matches_reference(rng, case):
    B, Hq, Hk, Sq, Sk, D, attrs, mask_kind = CASES[case]
    g = Graph()
    q = g.input("q", (B, Hq, Sq, D))
    k = g.input("k", (B, Hk, Sk, D))
    v = g.input("v", (B, Hk, Sk, D))
    feeds = {"q": randn(rng, (B, Hq, Sq, D)), "k": randn(rng, (B, Hk, Sk, D)), "v": randn(rng, (B, Hk, Sk, D))}
    mask = None
    if mask_kind == "bool":
        mask = g.input("mask", (B, 1, Sq, Sk), "bool")
        m = rng.random((B, 1, Sq, Sk)) > 0.3
        m[0, 0, 0, :] = False                      # one query sees nothing: output 0, lse -inf
        feeds["mask"] = m
    elif mask_kind == "add":
        mask = g.input("mask", (1, Hq, Sq, Sk))
        feeds["mask"] = np.where(rng.random((1, Hq, Sq, Sk)) > 0.2, randn(rng, (1, Hq, Sq, Sk)), -np.inf
                                 ).astype(np.float32)
    out, lse = g.attention_lse(q, k, v, mask, **attrs)
    g.output("out", out)
    g.output("lse", lse)
    g.output("plain", g.attention(q, k, v, mask, **attrs))
    with np.errstate(all="ignore"):
        ex = check(g, feeds)
    labels = [l.label for l in ex.program.launches]
    assert all(("[decode]" in x) == (Sq <= 16 and Sq * Hq // Hk <= 64) for x in labels if "attention" in x)
    assert not ex.stats()["fallbacks"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_attention(rng, dtype):
    g = Graph()
    q = g.input("q", (1, 4, 24, 16), dtype)
    k = g.input("k", (1, 2, 24, 16), dtype)
    v = g.input("v", (1, 2, 24, 16), dtype)
    g.output("causal", g.attention(q, k, v, None, causal=True))
    g.output("decode", g.attention(g.slice(q, axes=[2], starts=[23], ends=[24]), k, v, None))
    check(g, {n: randn(rng, s, dtype) for n, s in (("q", (1, 4, 24, 16)), ("k", (1, 2, 24, 16)),
                                                    ("v", (1, 2, 24, 16)))})


def test_output_is_written_in_the_layout_its_transpose_wants(rng):
    """attention -> transpose -> reshape: the kernel writes [B, S, H, D] so the reshape is a view."""
    g = Graph()
    q = g.input("q", (2, 3, 20, 8))
    k = g.input("k", (2, 3, 20, 8))
    o = g.attention(q, k, k, None, causal=True)
    g.output("y", g.reshape(g.transpose(o, perm=[0, 2, 1, 3]), shape=[2, 20, 24]))
    ex = check(g, {"q": randn(rng, (2, 3, 20, 8)), "k": randn(rng, (2, 3, 20, 8))})
    assert len(ex.program.launches) == 1 and ex.stats()["fused"]["transposed_output"] == 1


def test_split_decode_merges_in_one_launch_run_after_run(rng):
    """The last split program merges the partials and resets its arrival counter: every run of the
    same compiled graph (with new keys) is right, and no second launch merges."""
    from helpers import assert_close, compiled_pair
    from kiln.backends.triton.kernels.attention import Attention
    g = Graph()
    q = g.input("q", (2, 6, 1, 16))
    k = g.input("k", (2, 2, 300, 16))
    v = g.input("v", (2, 2, 300, 16))
    g.output("o", g.attention(q, k, v, None))
    ref_cg, cg = compiled_pair(g)
    kernels = [launch.fn for launch in cg.executor.program.launches if isinstance(launch.fn, Attention)]
    assert len(kernels) == 1 and kernels[0].decode and kernels[0].splits > 1
    assert len(cg.executor.program.launches) == 1
    for _ in range(3):
        feeds = {"q": randn(rng, (2, 6, 1, 16)), "k": randn(rng, (2, 2, 300, 16)), "v": randn(rng, (2, 2, 300, 16))}
        assert_close(cg.run(**feeds), ref_cg.run(**feeds))
    assert int(kernels[0]._arrived.sum()) == 0


def rope_cache_attention_steps(rng, B, Hq, Hk, L, D, R2, layout, dtype, positions):
    """rope(q), rope(k) into its cache, v into its cache and the attention over both caches, as one
    decode launch, run at each slot in `positions` and checked (output and both caches) against the
    reference; returns the attention kernel."""
    from helpers import TOL, assert_close, compiled_pair
    g = Graph()
    kc, vc = g.state("k_cache", (B, Hk, L, D), dtype), g.state("v_cache", (B, Hk, L, D), dtype)
    xq, xk, xv = (g.input(n, (B, h, 1, D), dtype) for n, h in (("xq", Hq), ("xk", Hk), ("xv", Hk)))
    cos, sin = g.input("cos", (B, 1, R2), dtype), g.input("sin", (B, 1, R2), dtype)
    slot = g.input("slot", (1,), "int64")
    mask = g.input("mask", (B, 1, 1, L), "bool")
    k_new = g.cache_write(kc, g.rope(xk, cos, sin, layout=layout), slot, axis=2)
    v_new = g.cache_write(vc, xv, slot, axis=2)
    g.assign(kc, k_new)
    g.assign(vc, v_new)
    g.output("o", g.attention(g.rope(xq, cos, sin, layout=layout), k_new, v_new, mask))
    ref_cg, cg = compiled_pair(g)
    launches = cg.executor.program.launches
    assert [l.archetype for l in launches] == ["attention"]
    assert cg.executor.stats()["fused"]["rope_qkv_cache_attention"] == 1
    caches = {n: randn(rng, (B, Hk, L, D), dtype) for n in ("k_cache", "v_cache")}
    for c in (ref_cg, cg):
        for n, a in caches.items():
            c.set_state(n, a)
    np_dt = caches["k_cache"].dtype
    for pos in positions:
        ang = rng.uniform(-3, 3, (B, 1, R2))
        feeds = {"xq": randn(rng, (B, Hq, 1, D), dtype), "xk": randn(rng, (B, Hk, 1, D), dtype),
                 "xv": randn(rng, (B, Hk, 1, D), dtype), "cos": np.cos(ang).astype(np_dt),
                 "sin": np.sin(ang).astype(np_dt), "slot": np.array([pos]),
                 "mask": np.arange(L)[None, None, None, :].repeat(B, 0) <= pos}
        feeds["mask"][-1, ..., :3] = False
        assert_close(cg.run(**feeds), ref_cg.run(**feeds), floor=TOL[dtype])
        for n in caches:
            assert_close({n: cg.get_state(n)}, {n: ref_cg.get_state(n)}, floor=TOL[dtype])
    return launches[0].fn


@pytest.mark.parametrize("layout,dtype", [("half", "float32"), ("interleaved", "float32"), ("half", "bfloat16")])
def test_decode_attention_rotates_and_caches_the_new_token_itself(rng, layout, dtype):
    """Whichever split holds the slot writes the new row, every split uses it from registers, the
    other rows come from the cache as it was: slots either side of a split boundary (48 keys a split here)."""
    from kiln.backends.triton.device import interpreting
    kern = rope_cache_attention_steps(rng, 2, 6, 2, 70, 16, 4, layout, dtype, (10, 60, 47, 48))
    assert kern.splits > 1 or not interpreting()   # (a GPU splits by 128 keys: one split here)
