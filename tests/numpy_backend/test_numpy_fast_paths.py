"""The NumPy executor's fast paths: kernels bound to parameters, shared transposed weights, the
KV-cache `where`, float32 gelu/sigmoid, borrowed outputs and the BLAS thread choice. Each is
checked against the reference kernels (or NumPy / exact float64 math), on real compiled graphs."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

import kiln
from kiln.backends.numpy.blas_threads import ThreadChoice, blas_threads, pool_size
from kiln.backends.numpy.kernels import KERNELS
from kiln.backends.numpy.transposed_weights import TRANSPOSED, transpose_tiled
from kiln.ir.ops.fused import LINEAR_ACTIVATIONS


def _fused_graph(dtype, shape, k, n, activation, norm):
    g = kiln.Graph()
    x = g.input("x", shape + (k,), dtype)
    out_n = n // 2 if activation in ("swiglu", "geglu", "geglu_tanh") else n
    w = g.parameter("w", (n, k), dtype)
    b = g.parameter("b", (n,), dtype)
    r = g.input("r", shape + (out_n,), dtype)
    nw = g.parameter("nw", (k,), dtype) if norm != "none" else None
    nb = g.parameter("nb", (k,), dtype) if norm == "layer_norm" else None
    g.output("y", g.fused_linear(x, w, b, r, nw, nb, activation=activation, norm=norm, eps=1e-5))
    return g


@pytest.mark.parametrize("norm", ["none", "rms_norm", "layer_norm"])
@pytest.mark.parametrize("activation", LINEAR_ACTIVATIONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_linear_with_bound_weights_matches_the_reference(dtype, activation, norm, rng):
    shape, k, n = (2, 3), 12, 10
    g = _fused_graph(dtype, shape, k, n, activation, norm)
    cg = kiln.compile(g, optimize=False)
    feeds = {name: (3 * rng.standard_normal(v.shape)).astype(dtype) for name, v in {**g.inputs, **g.parameters}.items()}
    cg.load_params({p: feeds[p] for p in g.parameters})
    got = cg.run(x=feeds["x"], r=feeds["r"])["y"]
    want = KERNELS["fused_linear"](feeds["x"], feeds["w"], feeds["b"], feeds["r"], feeds.get("nw"), feeds.get("nb"),
                                   activation=activation, norm=norm, eps=1e-5)
    assert cg.executor.reference_steps == {}, "the step fell back to the reference kernel"
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_matmul_against_a_transposed_parameter(rng):
    g = kiln.Graph()
    x = g.input("x", (5, 8))
    w = g.parameter("w", (6, 8))
    g.output("a", g.matmul(x, w, transpose_b=True))
    g.output("b", g.matmul(x, g.transpose(w, perm=[1, 0])))   # the transpose runs at load time
    cg = kiln.compile(g, optimize=False)
    xv, wv = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((6, 8)).astype(np.float32)
    cg.load_params({"w": wv})
    out = cg.run(x=xv)
    np.testing.assert_allclose(out["a"], xv @ wv.T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["b"], xv @ wv.T, rtol=1e-6, atol=1e-6)
    wv2 = rng.standard_normal((6, 8)).astype(np.float32)   # new weights re-bind
    cg.load_params({"w": wv2})
    np.testing.assert_allclose(cg.run(x=xv)["a"], xv @ wv2.T, rtol=1e-6, atol=1e-6)


def test_transposed_weights_are_made_once_and_shared_by_executors(rng):
    def graph(rows):
        g = kiln.Graph()
        g.output("y", g.linear(g.input("x", (rows, 8)), g.parameter("w", (4, 8))))
        return g

    w = rng.standard_normal((4, 8)).astype(np.float32)
    a, b = kiln.compile(graph(1), optimize=False), kiln.compile(graph(3), optimize=False)
    for cg in (a, b):
        cg.load_params({"w": w})
        cg.run(x=np.ones(cg.input_types["x"].shape, np.float32))
    wt = TRANSPOSED.get(w)
    assert wt.flags.c_contiguous and wt.shape == (8, 4) and np.array_equal(wt, w.T)
    assert TRANSPOSED.get(w) is wt
    key = id(w)
    del a, b, cg, wt, w
    gc.collect()
    assert key not in TRANSPOSED._entries, "the copy must go away with its weight"


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (257, 129), (128, 384)])
def test_tiled_transpose_is_the_transpose(shape, rng):
    w = rng.standard_normal(shape).astype(np.float32)
    wt = transpose_tiled(w)
    assert wt.flags.c_contiguous and wt.dtype == w.dtype
    np.testing.assert_array_equal(wt, w.T)


@pytest.mark.parametrize("picked", [[], [0], [5], [1, 4, 7]])
def test_where_along_one_axis_writes_only_the_chosen_slots(picked, rng):
    g = kiln.Graph()
    slots = g.input("slots", (1, 1, 8, 1), "bool")
    new = g.input("new", (2, 3, 1, 4))
    past = g.input("past", (2, 3, 8, 4))
    g.output("y", g.where(slots, new, past))
    cg = kiln.compile(g, optimize=False)
    cond = np.zeros((1, 1, 8, 1), bool)
    cond[0, 0, picked] = True
    nv, pv = rng.standard_normal((2, 3, 1, 4)).astype(np.float32), rng.standard_normal((2, 3, 8, 4)).astype(np.float32)
    np.testing.assert_array_equal(cg.run(slots=cond, new=nv, past=pv)["y"], np.where(cond, nv, pv))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_float32_gelu_and_sigmoid_hold_at_the_extremes(approximate):
    huge = [-3e38, 3e38] if approximate == "none" else []   # the tanh form's x**3 overflows (as the reference)
    x = np.concatenate([np.linspace(-100, 100, 2001), [-1e-30, 0.0, 1e-30], huge]).astype(np.float32)
    g = kiln.Graph()
    xi = g.input("x", x.shape)
    g.output("gelu", g.gelu(xi, approximate=approximate))
    g.output("sigmoid", g.sigmoid(xi))
    cg = kiln.compile(g, optimize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no overflow warnings either
        out = cg.run(x=x)
    assert cg.executor.reference_steps == {}
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.astype(np.float64))
    want = torch.nn.functional.gelu(t, approximate=approximate).numpy()
    finite = np.abs(x) < 1e3
    np.testing.assert_allclose(out["gelu"][finite], want[finite], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["sigmoid"], torch.sigmoid(t).numpy(), rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(out["sigmoid"])) and out["sigmoid"].min() >= 0 and out["sigmoid"].max() <= 1


def test_borrowed_outputs_are_arena_views_that_the_next_run_overwrites():
    g = kiln.Graph()
    x = g.input("x", (3,))
    g.output("y", g.tanh(x) * 2.0)
    cg = kiln.compile(g, optimize=False)
    one, two = np.ones(3, np.float32), np.full(3, 2.0, np.float32)
    copied = cg.run(x=one)["y"]
    borrowed = cg.run_borrowed(x=one)["y"]
    np.testing.assert_array_equal(borrowed, copied)
    assert any(np.shares_memory(borrowed, a) for a in cg.executor.arenas.values())
    cg.run(x=two)
    np.testing.assert_array_equal(borrowed, 2 * np.tanh(two))   # overwritten, as documented
    np.testing.assert_array_equal(copied, 2 * np.tanh(one))     # a copy stays


def _tiny_llama(path, max_positions: int):
    """A 2-layer HF Llama saved to `path` and loaded by kiln."""
    transformers = pytest.importorskip("transformers")
    import torch
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, max_position_embeddings=max_positions)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return kiln.load(path)


def test_a_decode_step_writes_the_kv_cache_in_place(tmp_path):
    """The cache is graph state: each decode step writes one slot into the same buffers (buffer
    identity), and allocates nothing near the cache's size (tracemalloc)."""
    import tracemalloc

    model = _tiny_llama(tmp_path, max_positions=2048)
    model.buckets = None    # exact shapes: the slot arithmetic below assumes an unpadded prompt
    cache = model.new_cache(1, 1024)
    model.prefill(np.array([[3, 5, 7]]), np.ones((1, 3), np.int64), np.array([[0, 1, 2]]), cache)
    dec = model.compiled("decode", 1, cache.max_len)
    plan = dec.plan
    assert set(plan.memory.state_in_place) == set(plan.states)          # every cache update is in place
    buffers = {n: dec.state_buffer(n) for n in plan.states}
    cache_bytes = sum(b.nbytes for b in buffers.values())
    model.decode(np.array([9]), np.array([3]), cache)                    # warm: binds the program
    before = dec.get_state("cache.0.key")
    tracemalloc.start()
    for t in range(4):
        model.decode(np.array([9 + t]), np.array([4 + t]), cache)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # what remains is per-row temporaries (an attention bias row of L floats), not cache-sized copies
    assert peak < cache_bytes / 8, (peak, cache_bytes)
    assert all(dec.state_buffer(n) is buffers[n] for n in plan.states)
    after = dec.get_state("cache.0.key")
    np.testing.assert_array_equal(after[:, :, :4], before[:, :, :4])      # earlier slots untouched
    assert not np.array_equal(after[:, :, 4:8], before[:, :, 4:8])       # four new slots written
    np.testing.assert_array_equal(dec.get_state("cache.mask")[0, :9], [1] * 8 + [0])


def test_llama_and_bert_graphs_run_without_reference_fallbacks(tmp_path):
    model = _tiny_llama(tmp_path, max_positions=128)
    model.generate(np.array([[3, 5, 7]]), max_new_tokens=3)
    assert [cg.executor.reference_steps for cg in model._compiled.values()] == [{}, {}]
    from kiln.models.bert import BertConfig, build_bert_graph
    bert = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16, type_vocab_size=2, layer_norm_eps=1e-12,
                      hidden_act="gelu")
    cg = kiln.compile(build_bert_graph(bert, 2, 5))
    cg.load_params({k: np.full(t.shape, 0.01, np.float32) for k, t in cg.param_types.items()})
    cg.run(input_ids=np.ones((2, 5), np.int64), attention_mask=np.ones((2, 5), np.int64),
           token_type_ids=np.zeros((2, 5), np.int64))
    assert cg.executor.reference_steps == {}


# ---- BLAS threads ----------------------------------------------------------------------------------

def _drive(choice: ThreadChoice, timing, runs: int) -> str:
    seq = []
    for i in range(runs):
        c = choice.next()
        choice.record(c, timing(i, c))
        seq.append(str(c))
    return "".join(seq)


def test_thread_choice_keeps_the_pool_when_it_is_faster():
    seq = _drive(ThreadChoice(), lambda i, c: 1.0 if c == 0 else 2.0, 200)
    assert seq.startswith("0000" + "1" + "0" * 8 + "1")   # warm-up, 3 pool runs, a trial, back-off
    assert seq.count("1") <= 6, "trials of the slower choice back off exponentially"


def test_thread_choice_moves_to_one_thread_when_the_pool_is_slow_and_back_when_it_recovers():
    busy = 100
    seq = _drive(ThreadChoice(), lambda i, c: (10.0 if c == 0 else 1.0) if i < busy else (0.5 if c == 0 else 1.0),
                 busy + 300)
    assert seq[5:busy].count("1") > 0.9 * (busy - 5)
    assert seq[-100:].count("1") <= 2, "back on the pool, with rare trials"


def test_blas_threads_restores_the_pool():
    before = pool_size()
    with blas_threads(1):
        assert pool_size() == 1
    assert pool_size() == before
