"""The executor: the Plan's memory, the on-disk kernel cache, load steps, states kept on the device,
a whole Llama decoder (prefill + decode, optimizer on) against the NumPy backend, and errors."""

import os

import numpy as np
import pytest
import torch

from helpers import assert_close, check, compiled_pair, randn
from kiln.backends.triton import TritonExecutor
from kiln.backends.triton.cache import KernelCache
from kiln.backends.triton.kernels.pointwise import PointwiseExpr, PointwiseKernel
from kiln.compile.plan import build_plan
from kiln.ir import Graph, as_dtype
from kiln.models.llama import LlamaConfig, LlamaGraphs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _chain_graph(n=12):
    g = Graph()
    x = g.input("x", (8, 16))
    w = g.parameter("w", (16, 16))
    h = x
    for i in range(n):
        h = g.softmax(g.linear(h, w)) + (h if i % 3 else x)
    g.output("y", h)
    return g


def test_the_backend_runs_in_the_plans_memory(rng):
    """One memory plan for both backends: every arena slot is the Plan's, and no second arena exists."""
    ex = check(_chain_graph(), {"x": randn(rng, (8, 16))}, {"w": randn(rng, (16, 16), scale=0.3)})
    mem = ex.plan.memory
    slots = [st for st in ex.program.storages if st.kind == "arena"]
    assert slots and all(st.offset == mem.storages[mem.value_storage[st.vid]].offset for st in slots)
    assert ex.arena_bytes == mem.planned_bytes < mem.unplanned_bytes   # reuse happened
    assert {k.archetype for k in ex.plan.kernels} >= {"matmul", "reduction"}
    assert len(ex.program.launches) == len(ex.plan.kernels)            # one launch per kernel


def test_kernel_cache_persists_generated_sources_on_disk(tmp_path):
    e = PointwiseExpr()
    x = e.add_input(as_dtype("float32"))
    e.outputs = [e.add("sigmoid", [x], {}, as_dtype("float32")).index]
    meta = torch.empty(5, 7, device="meta")
    first = KernelCache(tmp_path)
    PointwiseKernel(e, (5, 7), [meta], [meta], cache=first)
    PointwiseKernel(e, (5, 7), [meta], [meta], cache=first)
    assert (first.stats.generated, first.stats.memory_hits) == (1, 1)
    assert len(list((tmp_path / "pointwise").glob("*.py"))) == 1 and (tmp_path / "index.jsonl").exists()
    second = KernelCache(tmp_path)              # a new process: read from disk, nothing generated
    k = PointwiseKernel(e, (5, 7), [meta], [meta], cache=second)
    assert (second.stats.generated, second.stats.disk_hits) == (0, 1)
    x_t, out = torch.randn(5, 7, device=DEVICE), torch.empty(5, 7, device=DEVICE)
    k([x_t], [out])
    torch.testing.assert_close(out, torch.sigmoid(x_t))
    other = PointwiseKernel(e, (5, 8), [meta[:, :1].expand(5, 8)], [torch.empty(5, 8, device="meta")], cache=second)
    assert other.key != k.key and second.stats.generated == 1   # new shape/strides: a new kernel


def test_load_steps_run_once_when_params_are_bound(rng):
    g = Graph()
    x = g.input("x", (3, 4))
    wq, wk = g.parameter("wq", (4, 4)), g.parameter("wk", (2, 4))
    g.output("y", g.linear(x, g.concat([wq, wk], axis=0)))        # concat of weights: a load step
    plan = build_plan(g)
    assert plan.load_steps
    check(g, {"x": randn(rng, (3, 4))}, {"wq": randn(rng, (4, 4)), "wk": randn(rng, (2, 4))})


TINY = LlamaConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)


def _llama_params(plan, rng, np_dtype):
    return {name: ((1 + 0.1 * rng.standard_normal(t.shape)) if "norm" in name else
                   0.2 * rng.standard_normal(t.shape)).astype(np_dtype) for name, (_, t) in plan.params.items()}


def _optimized_pair(graph):
    from kiln.api import reference_evaluate
    from kiln.backends.numpy.executor import NumpyExecutor
    from kiln.compile import compile_graph
    from kiln.runtime.compiled_graph import CompiledGraph

    plan, report = compile_graph(graph, optimize=True, evaluate=reference_evaluate)
    assert not report.optimizer_fell_back and report.fusions
    return CompiledGraph(plan, NumpyExecutor(plan), "cpu"), CompiledGraph(plan, TritonExecutor(plan), "cuda")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_llama_prefill_then_decode_steps_with_the_cache_on_device(rng, dtype):
    """The KV cache is state: prefill writes it, decode steps fed only the new token read and write it
    on the device, sharing the prefill's buffers, and match the NumPy backend doing the same."""
    graphs = LlamaGraphs(TINY, dtype)
    B, S, L = 2, 5, 16
    np_dt = as_dtype(dtype).np_dtype
    pre_ref, pre = _optimized_pair(graphs.prefill_graph(B, S, last_only=True, cache_len=L))
    dec_ref, dec = _optimized_pair(graphs.decode_graph(B, L))
    params = _llama_params(pre.plan, rng, np_dt)
    for cg in (pre_ref, dec_ref):
        cg.load_params({k: v for k, v in params.items() if k in cg.param_types})
    weights = {}   # one device copy of the weights for both graphs, as CausalLM holds them
    for cg in (pre, dec):
        cg.share_params(weights, {k: v for k, v in params.items() if k in cg.param_types})
    assert dec.executor._persistent["param"].numel() == 0   # every weight bound to the prefill's buffers
    name = "model.layers.0.mlp.down_proj.weight"
    vid = dec.plan.params[name][0]
    assert dec.executor.param_buffer(vid).data_ptr() == pre.executor.param_buffer(pre.plan.params[name][0]).data_ptr()
    for a, b in ((pre_ref, dec_ref), (pre, dec)):
        for name in a.state_types:
            b.bind_state(name, a.state_buffer(name))
    ids = rng.integers(0, 64, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, :2] = 0                                             # left padding
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    feeds = dict(input_ids=ids, attention_mask=mask, position_ids=pos)
    ref, out = pre_ref.run(**feeds), pre.run(**feeds)
    floor = 2e-2 if dtype != "float32" else 0.0
    assert_close(out, ref, floor=floor)
    tok = ref["logits"][:, -1].argmax(-1)
    for step in range(3):
        feeds = dict(input_ids=tok[:, None], position_ids=pos[:, -1:] + 1 + step,
                     cache_position=np.array([S + step]))
        ref, got = dec_ref.run(**feeds), dec.run(**feeds)
        assert_close(got, ref, floor=floor)
        tok = ref["logits"][:, -1].argmax(-1)
    for name in dec.state_types:   # bfloat16 caches: two layers of bfloat16 activations, rounded again
        assert_close({name: dec.get_state(name)}, {name: dec_ref.get_state(name)}, floor=2 * floor)
    stats = dec.executor.stats()
    # rope(q, k) and both cache writes run inside each layer's decode attention launch
    assert stats["fused"]["rope_qkv_cache_attention"] == 2 and not stats["fallbacks"]
    assert not any(l.label.startswith("rope") and l.archetype == "layout" for l in dec.executor.program.launches)
    # per layer: qkv, o, gate_up, down (norms, residual adds and swiglu fused in); + the head
    assert stats["by_archetype"]["matmul"] == 2 * 4 + 1
    assert stats["by_archetype"]["attention"] == 2
    assert not any(l.label.startswith("state ") or "copy" in l.label for l in dec.executor.program.launches)


def test_cache_write_into_a_state_writes_one_row_in_place(rng):
    g = Graph()
    past = g.state("cache", (2, 3, 8, 4))
    new = g.input("new", (2, 3, 1, 4))
    slot = g.input("slot", (1,), "int64")
    g.assign(past, g.cache_write(past, new, slot))
    g.output("sum", g.sum(new, axes=[2]))
    plan = build_plan(g)
    ex = TritonExecutor(plan)
    assert [l.label for l in ex.program.launches] == ["cache_write", "sum"]   # no copy of the cache
    cache = randn(rng, (2, 3, 8, 4))
    ex.params_changed({})
    ex.set_state("cache", cache)
    for s in (2, 5):
        row = randn(rng, (2, 3, 1, 4))
        ex.run({plan.inputs["new"][0]: row, plan.inputs["slot"][0]: np.array([s])}, {})
        cache[:, :, s:s + 1] = row
        np.testing.assert_array_equal(ex.get_state("cache"), cache)


def test_errors_name_the_problem(rng):
    g = Graph()
    g.output("y", g.exp(g.input("x", (2,))))
    plan = build_plan(g)
    if not torch.cuda.is_available():
        os.environ.pop("TRITON_INTERPRET")
        try:
            with pytest.raises(RuntimeError, match="CUDA GPU"):
                TritonExecutor(plan)
        finally:
            os.environ["TRITON_INTERPRET"] = "1"
    g = Graph()
    st = g.state("s", (2,))
    g.assign(st, g.exp(st))
    ex = TritonExecutor(build_plan(g))
    with pytest.raises(TypeError, match="state 's': expected a contiguous torch.float32 tensor of shape"):
        ex.bind_state("s", torch.zeros(3, device=ex.device))



def test_shared_params_are_one_copy_and_a_new_array_is_uploaded(rng):
    """Graphs sharing a weight pool read one buffer: weights loaded through one are what the other
    computes with; a parameter given as a different array than the pool's is uploaded, not bound; a
    buffer of the wrong size is refused."""
    from kiln.runtime.compiled_graph import CompiledGraph

    def graph(k):
        g = Graph()
        x, w, b = g.input("x", (3,)), g.parameter("w", (3,)), g.parameter("b", (3,))
        g.output("y", x * w + b * g.scalar(float(k)))
        return CompiledGraph(build_plan(g), TritonExecutor(build_plan(g)), "cuda")

    one, two, three = graph(1), graph(2), graph(3)
    w, b, x = randn(rng, (3,)), randn(rng, (3,)), randn(rng, (3,))
    pool = {}
    one.share_params(pool, {"w": w, "b": b})
    two.share_params(pool, {"w": w, "b": b})
    np.testing.assert_allclose(two.run(x=x)["y"], x * w + 2 * b, rtol=1e-6)
    w2 = randn(rng, (3,))
    one.load_params({"w": w2, "b": b})               # into the shared buffer: `two` sees it
    np.testing.assert_allclose(two.run(x=x)["y"], x * w2 + 2 * b, rtol=1e-6)
    b3 = b + 1            # not the pool's arrays (w is not what its buffer holds now): three's own upload
    three.share_params(pool, {"w": w, "b": b3})
    np.testing.assert_allclose(three.run(x=x)["y"], x * w + 3 * b3, rtol=1e-6)
    np.testing.assert_allclose(two.run(x=x)["y"], x * w2 + 2 * b, rtol=1e-6)
    assert three.executor._persistent["param"].numel() > 0
    with pytest.raises(TypeError, match="parameter .*expected a flat torch.float32 tensor of 3 elements"):
        three.executor.bind_params({three.plan.params["w"][0]: torch.zeros(4, device=three.executor.device)})


def test_bind_states_rebinds_several_states_at_once(rng):
    """One rebind for many states: a reader given a writer's buffers for `a` and `b` reads and writes
    them (the writer sees its writes), keeps its own `c`, and its launches (already run once) use the
    new buffers."""
    w = Graph()
    x = w.input("x", (4,))
    for name in ("a", "b"):
        s = w.state(name, (4,))
        w.assign(s, s + x)
    w.output("x2", x + x)
    r = Graph()
    a, b, c = (r.state(n, (4,)) for n in ("a", "b", "c"))
    r.assign(a, a + c)
    r.assign(b, b + a)
    r.assign(c, c + a)
    r.output("y", (a + b) + c)
    writer, reader = TritonExecutor(build_plan(w)), TritonExecutor(build_plan(r))
    for ex in (writer, reader):
        ex.params_changed({})
    reader.run({}, {})                      # compiled and resolved over its own buffers
    reader.bind_states({"a": writer.state["a"], "b": writer.state["b"]})
    assert reader.state["a"] is writer.state["a"] and reader.state["c"] is not writer.state.get("c")
    xs = randn(rng, (4,))
    writer.run({writer.plan.inputs["x"][0]: xs}, {})
    writer.run({writer.plan.inputs["x"][0]: xs}, {})
    got = reader.run({}, {})["y"]
    np.testing.assert_allclose(got, 4 * xs, rtol=1e-6)                 # a = b = 2x, c = 0
    np.testing.assert_allclose(reader.get_state("c"), 2 * xs, rtol=1e-6)
    np.testing.assert_allclose(writer.get_state("a"), 2 * xs, rtol=1e-6)
    np.testing.assert_allclose(writer.get_state("b"), 4 * xs, rtol=1e-6)  # the reader's b += a, shared
    with pytest.raises(TypeError, match="state 'b'"):
        reader.bind_states({"a": writer.state["a"], "b": torch.zeros(3, device=reader.device)})
