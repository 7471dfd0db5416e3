"""Self-attention (MHA/GQA/MQA, causal or not, window, q/k norm, softcap, scale, fused or separate QKV, RoPE)
and cross-attention (own K/V projection, beam groups sharing a memory) against torch references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.ir import Graph
from kiln.nn import Attention, CrossAttention, Rope, RopeConfig
from nn_helpers import close, init_params, run, t
from test_nn_rope import _rotate
from torch_ref import allowed, heads, merge, rms, sdpa

CASES = {  # heads, kv_heads, options
    "mha_bidirectional": (4, 4, dict()),
    "gqa_causal_rope_qknorm": (4, 2, dict(causal=True, rope=True, qk_norm_eps=1e-6, qkv_bias=True)),
    "mqa_window_softcap": (4, 1, dict(causal=True, window=3, softcap=2.0, out_bias=True)),
    "gqa_separate_qkv_scale": (4, 2, dict(fused_qkv=False, scale=0.2, qkv_bias=True)),
    "bidirectional_window_unit_offset_norm": (2, 2, dict(window=2, qk_norm_eps=1e-5, qk_norm_unit_offset=True)),
}


def _qkv(p, name, fused, sizes):
    if fused:
        w = torch.split(t(p[f"{name}.qkv_proj.weight"]), sizes)
        b = torch.split(t(p[f"{name}.qkv_proj.bias"]), sizes) if f"{name}.qkv_proj.bias" in p else (None,) * 3
        return list(zip(w, b))
    return [(t(p[f"{name}.{n}_proj.weight"]), t(p[f"{name}.{n}_proj.bias"]) if f"{name}.{n}_proj.bias" in p else None)
            for n in "qkv"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_self_attention_matches_torch(case, rng):
    nh, nkv, opt = CASES[case]
    opt = dict(opt)
    dim, hd, b, s = 12, 6, 2, 7
    rope = Rope(RopeConfig(theta=50.0, partial_rotary_factor=0.5), hd) if opt.pop("rope", False) else None
    attn = Attention("attn", dim, nh, nkv, hd, rope=rope, **opt)
    p = init_params(attn, rng)
    x = rng.standard_normal((b, s, dim)).astype(np.float32)
    mask = np.ones((b, s), np.int64)
    mask[0, :2] = 0  # left padding in row 0
    pos = np.broadcast_to(np.arange(s), (b, s)).copy()
    g = Graph()
    keep = g.reshape(g.greater(g.input("mask", mask.shape, "int64"), g.scalar(0, "int64")), shape=[b, 1, 1, s])
    tables = rope.tables(g, g.input("pos", pos.shape, "int64")) if rope else None
    g.output("y", attn(g, g.input("x", x.shape), mask=keep, rope_tables=tables))
    got = run(g, p, x=x, mask=mask, **({"pos": pos} if rope else {}))["y"]

    (wq, bq), (wk, bk), (wv, bv) = _qkv(p, "attn", opt.get("fused_qkv", True), attn.sizes)
    q, k, v = heads(F.linear(t(x), wq, bq), nh), heads(F.linear(t(x), wk, bk), nkv), heads(F.linear(t(x), wv, bv), nkv)
    if "qk_norm_eps" in opt:
        off = opt.get("qk_norm_unit_offset", False)
        q = rms(q, t(p["attn.q_norm.weight"]), opt["qk_norm_eps"], off)
        k = rms(k, t(p["attn.k_norm.weight"]), opt["qk_norm_eps"], off)
    if rope:
        inv = torch.from_numpy(rope.inv_freq)
        q, k = _rotate(q, t(pos), inv, "half"), _rotate(k, t(pos), inv, "half")
    keep_t = allowed(s, s, opt.get("causal", False), opt.get("window")) & t(mask > 0)[:, None, None, :]
    o = merge(sdpa(q, k, v, keep_t, opt.get("scale"), opt.get("softcap")))
    want = F.linear(o, t(p["attn.o_proj.weight"]), t(p["attn.o_proj.bias"]) if opt.get("out_bias") else None)
    rows = keep_t.any(-1).squeeze(1)  # queries with at least one visible key
    close(got[rows.numpy()], want[rows])


def test_gqa_needs_whole_groups():
    with pytest.raises(ValueError, match="4 query heads are not a multiple of 3 kv heads"):
        Attention("a", 12, 4, 3)


@pytest.mark.parametrize("group", [1, 3])
def test_cross_attention_matches_torch_and_shares_the_memory_across_a_group(group, rng):
    dim, nh, mem_dim, b, s, m = 8, 2, 6, 2, 3, 5
    cross = CrossAttention("x", dim, nh, memory_dim=mem_dim, kv_bias=False, scale=0.4)
    p = init_params(cross, rng)
    assert "x.kv_proj.bias" not in p and "x.q_proj.bias" in p
    x = rng.standard_normal((b * group, s, dim)).astype(np.float32)
    mem = rng.standard_normal((b, m, mem_dim)).astype(np.float32)
    g = Graph()
    k, v = cross.memory(g, g.input("mem", mem.shape))
    g.output("y", cross(g, g.input("x", x.shape), k, v, group=group))
    got = run(g, p, x=x, mem=mem)["y"]

    mem_rows = t(mem).repeat_interleave(group, dim=0)  # utterance-major rows
    wk, wv = torch.split(t(p["x.kv_proj.weight"]), [dim, dim])
    q = heads(F.linear(t(x), t(p["x.q_proj.weight"]), t(p["x.q_proj.bias"])), nh)
    o = sdpa(q, heads(F.linear(mem_rows, wk), nh), heads(F.linear(mem_rows, wv), nh), scale=0.4)
    close(got, F.linear(merge(o), t(p["x.out_proj.weight"]), t(p["x.out_proj.bias"])))
