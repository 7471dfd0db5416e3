"""GPU-only checks: CUDA-graph replay, the cuBLAS matmul path, and Llama parity with HF transformers
on device="cuda" (float32 within 1e-4 with identical greedy tokens for 32 steps; bfloat16 no
worse than 2x HF's own bfloat16 error against float32, plus 1e-2 of the logits' scale).

The models compile with the e-graph optimizer on, as users run them (egglog's wheels travel to
the GPU machine). Generation on cuda keeps the KV cache on the device: a test counts the copies."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_close, check, compiled_pair, randn
from kiln.ir import Graph

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))


def test_cuda_graph_replays_with_new_inputs(rng):
    g = Graph()
    x = g.input("x", (64, 96))
    w = g.parameter("w", (96, 96))
    h = g.layer_norm(x, None, None)
    g.output("y", g.softmax(g.linear(h, w) + x))
    ref_cg, cg = compiled_pair(g)
    params = {"w": randn(rng, (96, 96), scale=0.1)}
    ref_cg.load_params(params)
    cg.load_params(params)
    for _ in range(3):
        feeds = {"x": randn(rng, (64, 96))}
        assert_close(cg.run(**feeds), ref_cg.run(**feeds))
    assert cg.executor.stats()["cuda_graph"]
    new_w = {"w": randn(rng, (96, 96), scale=0.1)}
    cg.load_params(new_w)           # new weights into the same addresses: the graph still replays
    ref_cg.load_params(new_w)
    feeds = {"x": randn(rng, (64, 96))}
    assert_close(cg.run(**feeds), ref_cg.run(**feeds))


def test_early_launched_gemvs_wait_for_the_kernel_before(rng):
    """A chain of dependent decode GEMVs (programmatic dependent launch on sm_90+): each reads the
    previous one's output, in eager runs and CUDA-graph replays, and the residual adds in place."""
    from kiln.backends.triton.device import programmatic_launch
    g = Graph()
    h = x = g.input("x", (1, 512), "bfloat16")
    ws = [g.parameter(f"w{i}", (512, 512), "bfloat16") for i in range(12)]
    for i, w in enumerate(ws):
        h = g.linear(h, w) + h if i % 2 else g.silu(g.linear(h, w))
    g.output("y", h + x)
    ref_cg, cg = compiled_pair(g, optimize=True)
    params = {f"w{i}": randn(rng, (512, 512), "bfloat16", scale=512 ** -0.5) for i in range(12)}
    ref_cg.load_params(params)
    cg.load_params(params)
    for _ in range(4):
        feeds = {"x": randn(rng, (1, 512), "bfloat16")}
        assert_close(cg.run(**feeds), ref_cg.run(**feeds), floor=2e-2)
    assert cg.executor.stats()["cuda_graph"]
    gemvs = [launch for launch in cg.executor.program.launches if "[gemv]" in launch.label]
    assert len(gemvs) == 12
    assert all(launch.fn.pdl == programmatic_launch() for launch in gemvs)


def test_large_decode_gemvs_run_the_persistent_kernel_at_real_shapes(rng):
    """The 1B decode's largest GEMVs (qkv with its norm, gate/up with swiglu, a 32K-row head; a
    weight of 12 MiB and more) run the persistent streaming kernel, early launched, against NumPy."""
    from kiln.backends.triton.device import programmatic_launch
    g, dtype = Graph(), "bfloat16"
    x = g.input("x", (1, 2048), dtype)
    nw = g.parameter("nw", (2048,), dtype)
    shapes = {"wqkv": (3072, 2048), "wgu": (16384, 2048), "whead": (32768, 2048)}
    w = {name: g.parameter(name, shape, dtype) for name, shape in shapes.items()}
    r = g.input("r", (1, 3072), dtype)
    g.output("qkv", g.fused_linear(x, w["wqkv"], None, r, nw, None, norm="rms_norm", eps=1e-5))
    g.output("mlp", g.fused_linear(x, w["wgu"], None, None, nw, None, activation="swiglu", norm="rms_norm"))
    g.output("head", g.fused_linear(x, w["whead"], None, None, nw, None, norm="rms_norm"))
    params = {name: randn(rng, shape, dtype, 2048 ** -0.5) for name, shape in shapes.items()}
    params["nw"] = (1 + 0.1 * rng.standard_normal(2048)).astype(params["wqkv"].dtype)
    ex = check(g, {"x": randn(rng, (1, 2048), dtype), "r": randn(rng, (1, 3072), dtype)}, params)
    gemvs = [launch.fn for launch in ex.program.launches if "[gemv]" in launch.label]
    assert len(gemvs) == 3 and all(fn.cfg.get("STREAM") for fn in gemvs), ex.describe()
    assert all(fn.pdl == programmatic_launch() for fn in gemvs)


def test_sum_squares_of_a_models_gradients_at_real_shapes(rng):
    """The training step's gradient-norm reduction over a 135M layer's gradient shapes (float32
    masters and a bfloat16 tensor), programs of 8192 elements, against float64 NumPy."""
    g = Graph()
    specs = [((960, 576), "float32"), ((576, 576), "float32"), ((3072, 576), "float32"), ((576, 1536), "float32"),
             ((576,), "float32"), ((49152, 576), "bfloat16"), ((3,), "float32")]
    xs = [g.input(f"x{i}", shape, dt) for i, (shape, dt) in enumerate(specs)]
    g.output("s", g.sum_squares(xs))
    feeds = {f"x{i}": randn(rng, shape, dt, 0.01) for i, (shape, dt) in enumerate(specs)}
    ref_cg, cg = compiled_pair(g)
    want = sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in feeds.values())
    for _ in range(2):   # the eager first run, then the CUDA graph's replay
        got = cg.run(**feeds)["s"]
        assert got.dtype == np.float64 and float(got) == pytest.approx(want, rel=1e-6)
    assert float(ref_cg.run(**feeds)["s"]) == pytest.approx(want, rel=1e-6)
    assert [launch.label for launch in cg.executor.program.launches] == ["sum_squares [7 tensors]"]


def test_training_step_norm_backward_and_rope_pair_at_real_shapes(rng):
    """A 135M training step's fused backward launches at its shapes, bfloat16, against NumPy:
    rms_norm_backward with dweight and the residual gradient's add (8 x 512 rows of 576, 528
    programs), and rope(q), rope(k) by one table in one launch (9 and 3 heads of 64)."""
    g = Graph()
    x, dy, r = (g.input(n, (8, 512, 576), "bfloat16") for n in ("x", "dy", "r"))
    w = g.parameter("w", (576,), "bfloat16")
    dx, dw = g.rms_norm_backward(x, w, dy, eps=1e-5, weight_grad=True)
    g.output("dw", dw)
    g.output("dx_sum", g.add(dx, r))
    q, k = g.input("q", (8, 9, 512, 64), "bfloat16"), g.input("k", (8, 3, 512, 64), "bfloat16")
    cos, sin = g.input("cos", (8, 512, 32), "bfloat16"), g.input("sin", (8, 512, 32), "bfloat16")
    g.output("rk", g.rope(k, cos, sin))
    g.output("rq", g.rope(q, cos, sin))
    feeds = {n: randn(rng, (8, 512, 576), "bfloat16") for n in ("x", "dy", "r")}
    feeds.update(q=randn(rng, (8, 9, 512, 64), "bfloat16"), k=randn(rng, (8, 3, 512, 64), "bfloat16"))
    angles = rng.uniform(0, 6.3, (8, 512, 32))
    feeds.update(cos=np.cos(angles).astype(feeds["q"].dtype), sin=np.sin(angles).astype(feeds["q"].dtype))
    ex = check(g, feeds, {"w": (1 + 0.5 * rng.standard_normal(576)).astype(feeds["q"].dtype)})
    labels = [launch.label for launch in ex.program.launches]
    assert "rms_norm_backward+add" in labels and "rope [2 tensors]" in labels, labels


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cublas_path_with_generated_epilogue(rng, dtype):
    g = Graph()
    x = g.input("x", (2, 160, 64), dtype)
    r = g.input("r", (2, 160, 48), dtype)
    nw = g.parameter("nw", (64,), dtype)
    w = g.parameter("w", (96, 64), dtype)
    w2 = g.parameter("w2", (48, 64), dtype)
    b = g.parameter("b", (48,), dtype)
    gate, up = g.split(g.linear(g.rms_norm(x, nw), w), sizes=[48, 48], axis=-1)
    g.output("mlp", g.swiglu(gate, up) + r)
    g.output("biased", g.linear(x, w2, b))
    ex = check(g, {"x": randn(rng, (2, 160, 64), dtype), "r": randn(rng, (2, 160, 48), dtype)},
               {"nw": randn(rng, (64,), dtype), "w": randn(rng, (96, 64), dtype, 0.2),
                "w2": randn(rng, (48, 64), dtype, 0.2), "b": randn(rng, (48,), dtype)})
    assert all("[cublas]" in l.label for l in ex.program.launches if l.archetype == "matmul")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from llama_checkpoints import save_checkpoint
    return save_checkpoint(tmp_path_factory.mktemp("llama3"), "llama3")


def test_llama_float32_logits_and_greedy_tokens_match_hf(llama):
    from kiln.load import load
    from test_llama import assert_generation_matches, hf_logits, left_padded_pair

    model = load(llama.path, device="cuda")
    ids, mask = left_padded_pair(llama.vocab_size, long=12)
    out = model(input_ids=ids, attention_mask=mask)
    ref = hf_logits(llama.hf, ids, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4, rtol=0)
    prompt = np.random.default_rng(2).integers(0, llama.vocab_size, size=(1, 9))
    assert_generation_matches(model, llama.hf, prompt, max_new_tokens=32)
    assert_generation_matches(model, llama.hf, ids, mask, max_new_tokens=12)


def test_llama_bfloat16_error_is_within_twice_hf_bfloat16(llama):
    import transformers

    from kiln.load import load

    ids = np.random.default_rng(7).integers(0, llama.vocab_size, size=(2, 16))
    with torch.no_grad():
        truth = llama.hf(torch.from_numpy(ids)).logits.numpy()
        hf16 = transformers.AutoModelForCausalLM.from_pretrained(llama.path, dtype=torch.bfloat16).eval()
        hf_err = np.abs(hf16(torch.from_numpy(ids)).logits.float().numpy() - truth).max()
    model = load(llama.path, device="cuda", dtype="bfloat16")
    kiln_err = np.abs(model(input_ids=ids) - truth).max()
    assert kiln_err <= 2 * hf_err + 1e-2 * np.abs(truth).max(), (kiln_err, hf_err)


def test_generate_on_cuda_brings_back_only_the_chosen_token_ids(llama):
    """32 greedy decode steps: one device-to-host copy per step, of the step's token ids ([B] int64);
    the KV cache and the logits never leave the GPU."""
    from torch.profiler import ProfilerActivity, profile

    from kiln.load import load

    model = load(llama.path, device="cuda")
    prompt = np.random.default_rng(3).integers(0, llama.vocab_size, size=(2, 9))
    model.generate(prompt, max_new_tokens=33, eos_token_id=[])      # compile and capture first
    torch.cuda.synchronize()
    runs = []
    for key, cg in model._compiled._graphs.items():   # which graphs run, and what each brings back
        def spy(*a, _key=key, _ex=cg.executor, _orig=cg.executor.run_async, **k):
            runs.append((_key[0], sorted(_ex.outputs)))
            return _orig(*a, **k)
        cg.executor.run_async = spy
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = model.generate(prompt, max_new_tokens=33, eos_token_id=[])
        torch.cuda.synchronize()
    assert out.shape == (2, 9 + 33)
    down = [e for e in prof.events() if "Memcpy DtoH" in e.name]
    assert len(down) == 33, (len(down), len(runs), runs[:2], runs[-1])   # prefill's ids + 32 decode steps
    nbytes = {getattr(e, "device_memory_usage", None) for e in down}
    dec = model.compiled("decode", 2, model.cache_length(9 + 33), select="greedy")
    assert list(dec.plan.outputs) == ["next_token"] and dec.plan.types[dec.plan.outputs["next_token"]].shape == (2,)
    # every state is written in place but input_ids: its new value is also the next_token output,
    # so it is copied from that (8 bytes a row)
    assert set(dec.plan.memory.state_in_place) == set(dec.plan.states) - {"input_ids"}, nbytes


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_decode_attention_with_rope_and_cache_writes_on_real_shapes(rng, layout):
    """SmolLM2-135M's decode attention (9 query, 3 KV heads of 64, bfloat16) over a 1024-slot cache
    split over many programs, rotating and caching the new token itself, at slots in several splits."""
    from test_triton_attention import rope_cache_attention_steps
    kern = rope_cache_attention_steps(rng, 1, 9, 3, 1024, 64, 32, layout, "bfloat16", (0, 127, 128, 700, 1023))
    assert kern.splits >= 4
