"""The executor: arena planning, the on-disk kernel cache, load steps, state kept on the device,
a whole Llama decoder (prefill + decode) against the NumPy backend, and errors."""

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


def test_arena_storages_that_live_at_once_never_share_bytes(rng):
    ex = check(_chain_graph(), {"x": randn(rng, (8, 16))}, {"w": randn(rng, (16, 16), scale=0.3)})
    sts = [s for s in ex.program.storages if s.kind in ("arena", "input", "scratch") and s.last >= s.first]
    for a in sts:
        for b in sts:
            if a.index < b.index and not (a.last < b.first or b.last < a.first):
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)
    assert ex.arena_bytes < sum(s.nbytes for s in sts)   # reuse happened


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_llama_prefill_then_decode_steps_with_the_cache_on_device(rng, dtype):
    """The decoder's KV cache (past.* -> present.*) stays in the executor's state buffers: decode
    steps fed only the new token match the NumPy backend fed the full cache each step."""
    graphs = LlamaGraphs(TINY, dtype)
    B, S, L = 2, 5, 16
    np_dt = as_dtype(dtype).np_dtype
    pre_ref, pre = compiled_pair(graphs.prefill_graph(B, S))
    dec_ref, dec = compiled_pair(graphs.decode_graph(B, L))
    params = _llama_params(pre.plan, rng, np_dt)
    for cg in (pre_ref, pre, dec_ref, dec):
        cg.load_params({k: v for k, v in params.items() if k in cg.param_types})
    ids = rng.integers(0, 64, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, :2] = 0                                             # left padding
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    feeds = dict(input_ids=ids, attention_mask=mask, position_ids=pos)
    ref = pre_ref.run(**feeds)
    out = pre.run(**feeds)
    assert_close(out, ref, floor=2e-2 if dtype != "float32" else 0.0)

    ex: TritonExecutor = dec.executor
    assert ex.state == {f"present.{i}.{k}": f"past.{i}.{k}" for i in range(2) for k in ("key", "value")}
    caches = {f"past.{i}.{k}": np.zeros((B, 2, L, 8), np_dt) for i in range(2) for k in ("key", "value")}
    for name in caches:
        caches[name][:, :, :S] = ref[name.replace("past", "present")]
    ex.feed({name: torch.from_numpy(c.astype(np.float32)).to(ex.inputs[name].dtype).to(ex.device)
             for name, c in caches.items()})
    full_mask = np.zeros((B, L), np.int64)
    full_mask[:, :S] = mask
    tok = ref["logits"][:, -1].argmax(-1)
    for step in range(3):
        slot = S + step
        full_mask[:, slot] = 1
        feeds = dict(input_ids=tok[:, None], position_ids=pos[:, -1:] + 1 + step,
                     cache_position=np.array([slot]), attention_mask=full_mask.copy())
        ref = dec_ref.run(**feeds, **caches)
        got = ex.run_device(feeds)                                  # no cache fed: it lives on the device
        logits = got["logits"].float().cpu().numpy()
        assert_close({"logits": logits}, {"logits": ref["logits"]}, floor=2e-2 if dtype != "float32" else 0.0)
        caches = {name: ref[name.replace("past", "present")] for name in caches}
        tok = ref["logits"][:, -1].argmax(-1)
    stats = ex.stats()
    assert stats["fused"]["rope_qkv_cache"] == 2 and not stats["fallbacks"]   # rope(q, k) + both cache writes
    # per layer: qkv, o, gate_up, down (norms, residual adds and swiglu fused in); + the head
    assert stats["by_archetype"]["matmul"] == 2 * 4 + 1
    assert stats["by_archetype"]["attention"] == 2 and stats["by_archetype"]["layout"] == 2 + 1   # + embedding


def test_optimized_plan_of_a_decoder_runs(rng):
    """The e-graph optimizer's output (fused_linear with norm prologue, swiglu and residual) runs."""
    from kiln.api import reference_evaluate
    from kiln.compile import compile_graph
    from kiln.backends.numpy.executor import NumpyExecutor
    from kiln.runtime.compiled_graph import CompiledGraph

    plan, report = compile_graph(LlamaGraphs(TINY, "float32").decode_graph(2, 16), optimize=True,
                                 evaluate=reference_evaluate)
    assert not report.optimizer_fell_back and report.fusions
    ref, cg = CompiledGraph(plan, NumpyExecutor(plan), "cpu"), CompiledGraph(plan, TritonExecutor(plan), "cuda")
    params = _llama_params(plan, rng, np.float32)
    ref.load_params(params)
    cg.load_params(params)
    mask = np.zeros((2, 16), np.int64)
    mask[:, :4] = 1
    feeds = dict(input_ids=rng.integers(0, 64, (2, 1)), position_ids=np.full((2, 1), 3),
                 cache_position=np.array([3]), attention_mask=mask,
                 **{f"past.{i}.{k}": randn(rng, (2, 2, 16, 8)) for i in range(2) for k in ("key", "value")})
    assert_close(cg.run(**feeds), ref.run(**feeds))
    assert "fused_linear" in {s.op for s in plan.steps} and not cg.executor.stats()["fallbacks"]


def test_kv_cache_pattern_writes_one_row_in_place(rng):
    """present = where(slot == arange(L), new, past) with present -> past as state: a row write."""
    g = Graph()
    past = g.input("past", (2, 3, 8, 4))
    new = g.input("new", (2, 3, 1, 4))
    slot = g.input("slot", (1,), "int64")
    here = g.reshape(g.equal(g.constant(np.arange(8, dtype=np.int64)), slot), shape=[1, 1, 8, 1])
    g.output("present", g.where(here, new, past))
    plan = build_plan(g)
    ex = TritonExecutor(plan, state={"present": "past"})
    assert ex.stats()["fused"]["kv_cache_write"] == 1
    cache = randn(rng, (2, 3, 8, 4))
    ex.params_changed({})
    ex.feed({"past": cache})
    for s in (2, 5):
        row = randn(rng, (2, 3, 1, 4))
        out = ex.run_device({"new": row, "slot": np.array([s])})["present"]
        cache[:, :, s:s + 1] = row
        np.testing.assert_array_equal(out.cpu().numpy(), cache)


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
    ex = TritonExecutor(plan)
    with pytest.raises(RuntimeError, match="parameters are not uploaded"):
        ex.run_device({})
    ex.params_changed({})
    with pytest.raises(KeyError, match="unknown input 'z'"):
        ex.run_device({"z": torch.zeros(2)})
    with pytest.raises(ValueError, match="input 'x': expected"):
        ex.run_device({"x": torch.zeros(3, device=ex.device)})
    with pytest.raises(ValueError, match="state pair"):
        TritonExecutor(plan, state={"y": "nope"})
