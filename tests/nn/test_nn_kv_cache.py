"""The graph side of the KV cache: a prefill that fills the cache states, then decode steps that write one
slot each, give what attention over the whole sequence gives (left padding, GQA, RoPE, sliding window);
the SlotCache (Whisper) matches the same reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.ir import Graph
from kiln.nn import Attention, DecodeCache, PromptCache, Rope, RopeConfig, SlotCache
from kiln.runtime.compiler import compile
from kiln.runtime.kv_cache import MASK, cache_name
from nn_helpers import close, init_params, t
from test_nn_rope import _rotate
from torch_ref import allowed, heads, merge, sdpa

DIM, NH, NKV, HD, B, S, STEPS, L = 12, 4, 2, 6, 2, 4, 3, 8


def _attn(window):
    rope = Rope(RopeConfig(theta=30.0), HD)
    return Attention("a", DIM, NH, NKV, HD, causal=True, window=window, rope=rope, layer=0), rope


def _reference(p, attn, x, pos, mask):
    """Attention over the whole sequence: slot j visible from slot i when j <= i, mask[j] and i - j < window."""
    wq, wk, wv = torch.split(t(p["a.qkv_proj.weight"]), list(attn.sizes))
    inv = torch.from_numpy(attn.rope.inv_freq)
    q = _rotate(heads(F.linear(t(x), wq), NH), t(pos), inv, "half")
    k = _rotate(heads(F.linear(t(x), wk), NKV), t(pos), inv, "half")
    keep = allowed(x.shape[1], x.shape[1], True, attn.window) & t(mask > 0)[:, None, None, :]
    return F.linear(merge(sdpa(q, k, heads(F.linear(t(x), wv), NKV), keep)), t(p["a.o_proj.weight"]))


@pytest.mark.parametrize("window", [None, 3])
def test_prefill_then_decode_matches_attention_over_the_whole_sequence(window, rng):
    attn, rope = _attn(window)
    p = init_params(attn, rng)
    n = S + STEPS
    x = rng.standard_normal((B, n, DIM)).astype(np.float32)
    mask = np.ones((B, n), np.int64)
    mask[1, :2] = 0                                   # row 1 is left-padded
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)

    g = Graph()
    cache = PromptCache(g, g.input("mask", (B, S), "int64"), L, kv_heads=NKV, head_dim=HD, dtype="float32")
    tables = rope.tables(g, g.input("pos", (B, S), "int64"))
    g.output("y", attn(g, g.input("x", (B, S, DIM)), rope_tables=tables, cache=cache))
    prefill = compile(g)
    assert set(prefill.state_types) == {MASK, cache_name(0, "key"), cache_name(0, "value")}

    g = Graph()
    xin, pin = g.input("x", (B, 1, DIM)), g.input("pos", (B, 1), "int64")
    cache = DecodeCache(g, B, L, NKV, HD, "float32")
    g.output("y", attn(g, xin, rope_tables=rope.tables(g, pin), cache=cache))
    decode = compile(g)
    for cg in (prefill, decode):
        cg.load_params(p)
    for name in prefill.state_types:  # stale values in the free slots must not matter
        prefill.set_state(name, np.full(prefill.state_types[name].shape, 7, prefill.state_types[name].dtype.np_dtype))

    want = _reference(p, attn, x, pos, mask)
    got = prefill.run(x=x[:, :S], mask=mask[:, :S], pos=pos[:, :S])["y"]
    real = mask[:, :S] > 0
    close(got[real], want[:, :S][torch.from_numpy(real)])
    np.testing.assert_array_equal(prefill.get_state(MASK), np.pad(mask[:, :S], [(0, 0), (0, L - S)]))
    for name in prefill.state_types:
        decode.set_state(name, prefill.get_state(name))
    for step in range(STEPS):
        slot = S + step
        got = decode.run(x=x[:, slot:slot + 1], pos=pos[:, slot:slot + 1], cache_position=np.array([slot]))["y"]
        close(got[:, 0], want[:, slot])
        assert decode.get_state(MASK)[:, slot].tolist() == [1, 1]


def test_slot_cache_matches_attention_over_the_whole_sequence(rng):
    """Whisper's contract: a prompt of 3 tokens, then 2 more, written into shared cache states at
    cache_position; each query sees the slots up to its own."""
    attn = Attention("a", DIM, NH, NKV, HD, causal=True, layer=0)
    p = init_params(attn, rng)
    seq0, seq1, length = 3, 2, 8
    x = rng.standard_normal((B, seq0 + seq1, DIM)).astype(np.float32)
    wq, wk, wv = torch.split(t(p["a.qkv_proj.weight"]), list(attn.sizes))
    keep = torch.ones(seq0 + seq1, seq0 + seq1).tril().bool()
    o = sdpa(heads(F.linear(t(x), wq), NH), heads(F.linear(t(x), wk), NKV), heads(F.linear(t(x), wv), NKV), keep)
    want = F.linear(merge(o), t(p["a.o_proj.weight"]))

    outs, first = [], None
    for seq, start in ((seq0, 0), (seq1, seq0)):
        g = Graph()
        cache = SlotCache(g, B, seq, length, NKV, HD, "float32")
        g.output("y", attn(g, g.input("x", (B, seq, DIM)), cache=cache))
        cg = compile(g)
        cg.load_params(p)
        if first is None:
            first = cg
        else:
            for name in cg.state_types:
                cg.bind_state(name, first.state_buffer(name))
        outs.append(cg.run(x=x[:, start:start + seq], cache_position=np.array([start]))["y"])
    close(np.concatenate(outs, 1), want)
