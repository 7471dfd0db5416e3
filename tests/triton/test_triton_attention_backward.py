"""Attention archetype, backward: the flash attention_backward kernels against torch autograd through a
float64 reference attention, and inside a differentiated graph against the NumPy backend."""

import numpy as np
import pytest
import torch

from helpers import check, randn
from kiln.backends.triton import TritonExecutor
from kiln.compile.plan import build_plan
from kiln.ir import Graph
from kiln.ir.ops.attention import allowed_positions
from kiln.runtime.compiled_graph import CompiledGraph

# max |kiln - reference| over max |reference|, by dtype (bfloat16: P and dS enter the products rounded)
TOL = {"float32": 2e-5, "bfloat16": 2.5e-2}


def reference_attention(q, k, v, mask=None, causal=False, scale=None, window=None, softcap=None):
    """(out, lse) of attention in torch, differentiable; fully masked rows give 0 and lse = -inf."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    allowed = allowed_positions(q.shape[2], k.shape[2], causal, window)   # the op spec's rule
    if allowed is not None:
        s = s.masked_fill(~torch.from_numpy(allowed).to(q.device), float("-inf"))
    dead = (s == float("-inf")).all(-1, keepdim=True)
    s = s.masked_fill(dead, 0.0)             # finite softmax inputs, so autograd gives no NaN ...
    p = torch.softmax(s, -1).masked_fill(dead, 0.0)   # ... and the row attends to nothing
    lse = torch.logsumexp(s, -1).masked_fill(dead[..., 0], float("-inf"))
    return p @ v, lse


CASES = {
    # name: (B, Hq, Hk, Sq, Sk, D, attrs, mask, dlse)
    "causal_gqa": (1, 4, 2, 33, 33, 16, dict(causal=True), None, False),
    "full": (2, 2, 2, 17, 17, 32, dict(), None, False),
    "causal_fewer_queries": (1, 2, 1, 5, 33, 16, dict(causal=True), None, False),
    "causal_more_queries": (1, 2, 2, 33, 18, 16, dict(causal=True), None, False),   # first rows see nothing
    "window_softcap_gqa": (1, 4, 2, 33, 33, 16, dict(causal=True, window=5, softcap=3.0), None, False),
    "window_noncausal_additive": (1, 2, 2, 17, 33, 16, dict(window=4, scale=0.3), "add", False),
    "window_noncausal_narrow": (1, 2, 1, 17, 33, 16, dict(window=2), None, False),   # blocks on both sides skipped
    "bool_mask_gqa": (2, 4, 2, 17, 17, 16, dict(), "bool", False),
    "padding_mask_causal": (2, 4, 2, 17, 17, 16, dict(causal=True), "bool_keys", False),
    "additive_per_key": (1, 2, 2, 17, 33, 32, dict(), "add_keys", False),
    "causal_dlse": (1, 2, 1, 17, 17, 32, dict(causal=True), None, True),
    "additive_dlse_sq_ne_sk": (1, 4, 2, 17, 5, 16, dict(), "add", True),
}


def _feeds(rng, B, Hq, Hk, Sq, Sk, D, dtype, mask_kind):
    f = {"q": randn(rng, (B, Hq, Sq, D), dtype), "k": randn(rng, (B, Hk, Sk, D), dtype),
         "v": randn(rng, (B, Hk, Sk, D), dtype)}
    if mask_kind == "bool":
        m = rng.random((B, 1, Sq, Sk)) > 0.3
        m[0, 0, 2] = False                               # a fully masked query row
        f["mask"] = m
    elif mask_kind == "add":
        m = np.where(rng.random((1, Hq, Sq, Sk)) > 0.2, rng.standard_normal((1, Hq, Sq, Sk)), -np.inf)
        m[0, 1, 3] = -np.inf                             # a fully masked query row
        f["mask"] = m.astype(f["q"].dtype)
    elif mask_kind == "bool_keys":                       # padding: the kernels load it by key
        m = rng.random((B, 1, 1, Sk)) > 0.3
        m[0, 0, 0, 0] = False                            # with causal, batch 0's first query sees nothing
        f["mask"] = m
    elif mask_kind == "add_keys":
        m = np.where(rng.random((1, Hq, 1, Sk)) > 0.2, rng.standard_normal((1, Hq, 1, Sk)), -np.inf)
        f["mask"] = m.astype(f["q"].dtype)
    return f


MASK_SHAPES = {"bool": lambda B, Hq, Sq, Sk: (B, 1, Sq, Sk), "add": lambda B, Hq, Sq, Sk: (1, Hq, Sq, Sk),
               "bool_keys": lambda B, Hq, Sq, Sk: (B, 1, 1, Sk), "add_keys": lambda B, Hq, Sq, Sk: (1, Hq, 1, Sk)}


def _torch(a):
    return torch.from_numpy(np.asarray(a, np.float64 if a.dtype != np.bool_ else np.bool_))


def _backward_graph(B, Hq, Hk, Sq, Sk, D, dtype, attrs, mask_kind, with_dlse):
    g = Graph()
    q = g.input("q", (B, Hq, Sq, D), dtype)
    k = g.input("k", (B, Hk, Sk, D), dtype)
    v = g.input("v", (B, Hk, Sk, D), dtype)
    mask = None
    if mask_kind is not None:
        mask = g.input("mask", MASK_SHAPES[mask_kind](B, Hq, Sq, Sk), "bool" if mask_kind.startswith("bool") else dtype)
    out = g.input("out", (B, Hq, Sq, D), dtype)
    lse = g.input("lse", (B, Hq, Sq), "float32")
    dout = g.input("dout", (B, Hq, Sq, D), dtype)
    dlse = g.input("dlse", (B, Hq, Sq), "float32") if with_dlse else None
    for name, x in zip(("dq", "dk", "dv"), g.attention_backward(q, k, v, mask, out, lse, dout, dlse, **attrs)):
        g.output(name, x)
    return g


def _run_case(rng, case, dtype):
    B, Hq, Hk, Sq, Sk, D, attrs, mask_kind, with_dlse = CASES[case]
    feeds = _feeds(rng, B, Hq, Hk, Sq, Sk, D, dtype, mask_kind)
    q, k, v = (_torch(feeds[n]).requires_grad_() for n in "qkv")
    out, lse = reference_attention(q, k, v, _torch(feeds["mask"]) if "mask" in feeds else None, **attrs)
    dout = torch.randn(out.shape, dtype=torch.float64)
    dlse = torch.randn(lse.shape, dtype=torch.float64) if with_dlse else None
    live_lse = lse.masked_fill(torch.isinf(lse), 0.0)    # a dead row's lse is constant: no gradient
    torch.autograd.backward([out, live_lse] if with_dlse else [out], [dout, dlse] if with_dlse else [dout])
    np_dt = feeds["q"].dtype
    feeds.update(out=out.detach().numpy().astype(np_dt), lse=lse.detach().numpy().astype(np.float32),
                 dout=dout.numpy().astype(np_dt))
    if with_dlse:
        feeds["dlse"] = dlse.numpy().astype(np.float32)
    plan = build_plan(_backward_graph(B, Hq, Hk, Sq, Sk, D, dtype, attrs, mask_kind, with_dlse))
    cg = CompiledGraph(plan, TritonExecutor(plan), "cuda")
    got = cg.run(**feeds)
    ex = cg.executor
    assert [type(l.fn).__name__ for l in ex.program.launches] == ["AttentionBackward"]
    assert not ex.stats()["fallbacks"]
    assert ex.program.launches[0].fn.flags["MASK"] == (mask_kind or "none")   # a padding mask loads by key
    for name, want in (("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        o, w = got[name].astype(np.float64), want.numpy()
        assert got[name].dtype == np_dt
        err = np.abs(o - w).max() / max(np.abs(w).max(), 1.0)
        assert err <= TOL[dtype], f"{case} {name}: max error {err:.3g} > {TOL[dtype]}"
    return got


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_backward_matches_torch_autograd_float32(rng, case):
    got = _run_case(rng, case, "float32")
    if case == "bool_mask_gqa":
        assert not got["dq"][0, :, 2].any()          # the fully masked row: exactly 0
    if case == "padding_mask_causal":
        assert not got["dq"][0, :, 0].any()
    if case == "causal_more_queries":
        assert not got["dq"][:, :, :15].any()        # queries before the first key see nothing


@pytest.mark.parametrize("case", ["causal_gqa", "window_softcap_gqa", "bool_mask_gqa", "additive_dlse_sq_ne_sk",
                                  "additive_per_key"])
def test_attention_backward_matches_torch_autograd_bfloat16(rng, case):
    _run_case(rng, case, "bfloat16")


def test_mask_grad_and_unequal_value_head_dim_keep_the_torch_fallback(rng):
    g = Graph()
    q, k = g.input("q", (1, 2, 5, 16)), g.input("k", (1, 2, 5, 16))
    v, v8 = g.input("v", (1, 2, 5, 16)), g.input("v8", (1, 2, 5, 8))
    mask = g.input("mask", (1, 1, 5, 5))
    out, lse = g.attention_lse(q, k, v, mask)
    out8, lse8 = g.attention_lse(q, k, v8, None)
    for name, x in zip(("dq", "dk", "dv", "dmask"), g.attention_backward(q, k, v, mask, out, lse, out, None,
                                                                         mask_grad=True)):
        g.output(name, x)
    for name, x in zip(("dq8", "dk8", "dv8"), g.attention_backward(q, k, v8, None, out8, lse8, out8, None)):
        g.output(name, x)
    feeds = {n: randn(rng, s) for n, s in (("q", (1, 2, 5, 16)), ("k", (1, 2, 5, 16)), ("v", (1, 2, 5, 16)),
                                            ("v8", (1, 2, 5, 8)), ("mask", (1, 1, 5, 5)))}
    ex = check(g, feeds)
    assert ex.stats()["fallbacks"] == {"attention_backward [torch]": 2, "attention_lse [torch]": 1}


def test_gradient_of_a_graph_with_attention_runs_the_flash_backward(rng):
    """kiln.autodiff.grad of causal GQA attention with a bool mask: the generated backward, not the
    fallback, and the same gradients as the NumPy backend."""
    from kiln.autodiff import grad
    g = Graph("attn")
    q = g.parameter("q", (2, 4, 17, 16))
    k = g.parameter("k", (2, 2, 17, 16))
    v = g.parameter("v", (2, 2, 17, 16))
    mask = g.input("mask", (2, 1, 17, 17), "bool")
    w = g.input("w", (2, 4, 17, 16))
    g.output("loss", g.sum(g.attention(q, k, v, mask, causal=True) * w))
    m = rng.random((2, 1, 17, 17)) > 0.2
    m[1, 0, 4] = False
    params = {n: randn(rng, s) for n, s in (("q", (2, 4, 17, 16)), ("k", (2, 2, 17, 16)), ("v", (2, 2, 17, 16)))}
    ex = check(grad(g), {"mask": m, "w": randn(rng, (2, 4, 17, 16))}, params)
    kinds = [type(l.fn).__name__ for l in ex.program.launches if l.label == "attention_backward"]
    assert kinds == ["AttentionBackward"]
    assert not ex.stats()["fallbacks"]


@pytest.mark.gpu
def test_attention_backward_training_shape_on_gpu():
    """SmolLM2-135M's attention (Hq=9, Hk=3, D=64) at S=512, bfloat16, causal, with a padding mask like
    the training graph's ([B, 1, 1, S]; batch 1's first 37 keys padded, so its first 37 queries see
    nothing) and the H200 block sizes, against torch autograd in float32 from the same bfloat16 inputs."""
    from kiln.backends.triton.device import to_numpy
    torch.manual_seed(0)
    B, Hq, Hk, S, D = 2, 9, 3, 512, 64
    q = torch.randn(B, Hq, S, D, device="cuda").bfloat16()
    k = torch.randn(B, Hk, S, D, device="cuda").bfloat16()
    v = torch.randn(B, Hk, S, D, device="cuda").bfloat16()
    keep = torch.ones(B, 1, 1, S, dtype=torch.bool, device="cuda")
    keep[1, :, :, :37] = False
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    out, lse = reference_attention(qf, kf, vf, keep, causal=True)
    dout = torch.randn(out.shape, device="cuda").bfloat16()
    out.backward(dout.float())
    plan = build_plan(_backward_graph(B, Hq, Hk, S, S, D, "bfloat16", dict(causal=True), "bool_keys", False))
    cg = CompiledGraph(plan, TritonExecutor(plan), "cuda")
    got = cg.run(q=to_numpy(q), k=to_numpy(k), v=to_numpy(v), mask=keep.cpu().numpy(),
                 out=to_numpy(out.detach().bfloat16()), lse=lse.detach().cpu().numpy(), dout=to_numpy(dout))
    assert [type(l.fn).__name__ for l in cg.executor.program.launches] == ["AttentionBackward"]
    for name, want in (("dq", qf.grad), ("dk", kf.grad), ("dv", vf.grad)):
        w = want.double().cpu().numpy()
        err = np.abs(got[name].astype(np.float64) - w).max() / np.abs(w).max()
        assert err <= TOL["bfloat16"], f"{name}: max error {err:.3g}"
    assert not got["dq"][1, :, :37].any() and not got["dk"][1, :, :37].any()


def test_a_differentiated_attention_stores_its_output_with_heads_merged(rng):
    """attention -> transpose -> reshape (heads merged for the o-projection), differentiated: the
    output is stored permuted although attention_backward reads it too, so neither the forward's
    merge nor the backward's weight gradient copies it; gradients as on the NumPy backend."""
    from kiln.autodiff import grad
    g = Graph("attn_o")
    x = g.input("x", (2, 4, 9, 8))   # q depends on a run input, so the step is not folded at load
    q = g.add(g.parameter("q", (2, 4, 9, 8)), x)
    k = g.parameter("k", (2, 2, 9, 8))
    v = g.parameter("v", (2, 2, 9, 8))
    wo = g.parameter("wo", (6, 32))
    heads = g.reshape(g.transpose(g.attention(q, k, v, None, causal=True), perm=[0, 2, 1, 3]), shape=[2, 9, 32])
    g.output("loss", g.sum(g.tanh(g.linear(heads, wo))))
    params = {n: randn(rng, s) for n, s in (("q", (2, 4, 9, 8)), ("k", (2, 2, 9, 8)), ("v", (2, 2, 9, 8)),
                                            ("wo", (6, 32)))}
    ex = check(grad(g), {"x": randn(rng, (2, 4, 9, 8))}, params)
    assert ex.plan.layouts, "the attention output is not stored permuted"
    assert not [launch.label for launch in ex.program.launches if launch.label == "reshape"]
