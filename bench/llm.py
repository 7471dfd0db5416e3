"""LLM decode/prefill benchmark on one GPU: kiln (Triton backend) vs HF transformers eager vs
torch.compile(mode="reduce-overhead"), in one run with each peer in its own process (a crash or a
hang loses only that peer), bfloat16, random weights.

Models: SmolLM2-135M and SmolLM2-360M configurations. For each model the same random weights
(HF's init) are saved once with `save_pretrained` and loaded by kiln through `kiln.load`, so
the peers run identical weights (the greedy tokens of kiln and HF are compared as a sanity check).

Measured, per model:
- decode ms/token at batch 1 and 8: prompt 128, 128 new tokens, greedy, one step = one new
  token per row (at batch 8, ms per step); every peer runs the benchmark's own decode loop over a
  static KV cache (HF: transformers' StaticCache; torch.compile: `cudagraph_mark_step_begin()`
  before each compiled step and a clone of the chosen token, the recipe that works on torch 2.11);
  kiln runs its public API, `model.generate` (greedy: the KV cache stays on the GPU as graph
  state, each step replays one CUDA graph and brings back only the chosen ids), e-graph on.
- prefill latency for 512 tokens (batch 1, logits of the last position, KV cache written).
- cold compile / warm-up time: kiln from graph build to kernels compiled and CUDA graphs captured,
  with empty kernel caches; torch.compile: the first calls until steady state.
- decode as a percentage of the HBM roofline: (weight bytes + KV bytes read per step) / bandwidth,
  with the bandwidth measured here by a large device-to-device copy.

    python bench/llm.py [--models 135m,360m] [--batches 1,8] [--peers kiln,eager,compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from timing import cold_caches, cuda_ms, log, median, replay_profile

CONFIGS = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                 rms_norm_eps=1e-5, max_position_embeddings=8192),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
               rms_norm_eps=1e-5, max_position_embeddings=8192),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5, head_dim=64, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                 rms_norm_eps=1e-5, max_position_embeddings=8192),
}


def hbm_bandwidth(torch) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (bytes read + written)."""
    import triton.testing
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median")
    return 2 * (1 << 30) / (ms * 1e-3)


# ---- kiln ---------------------------------------------------------------------------------------

def bench_kiln(torch, ckpt: Path, batches, prompt: int, new: int, prefill: int, res: dict, profile: bool,
               tokens: dict):
    """Through the public API only: kiln.load, CausalLM.warmup / generate. `tokens` (batch -> greedy
    ids) is filled as each batch is measured."""
    import numpy as np
    import kiln

    t0 = time.perf_counter()
    model = kiln.load(str(ckpt), device="cuda", dtype="bfloat16")
    res["kiln_load_s"] = time.perf_counter() - t0

    def generate(ids, n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, eos_token_id=[])
        torch.cuda.synchronize()
        return out, (time.perf_counter() - t) * 1e3

    for B in batches:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, model.graphs.vocab_size, (B, prompt))
        t0 = time.perf_counter()
        model.warmup(B, prompt, new, select="greedy")
        generate(ids, new)   # kernels compiled, CUDA graphs captured: the warmed cache length (not 2 tokens' own)
        res[f"kiln_compile_s_b{B}"] = time.perf_counter() - t0
        dec = model.compiled("decode", B, model.cache_length(prompt + new), select="greedy")
        st = dec.executor.stats()
        res[f"kiln_decode_launches_b{B}"] = st["launches"]
        res[f"kiln_decode_graph_b{B}"] = st["cuda_graph"]
        res[f"kiln_optimized_b{B}"] = dec.report.optimized
        log(f"  kiln b{B}: compile {res[f'kiln_compile_s_b{B}']:.1f}s, decode launches {st['launches']} "
            f"{st['by_archetype']}, fused {st['fused']}, fallbacks {st['fallbacks']}, cuda graph {st['cuda_graph']}, "
            f"optimized {dec.report.optimized}")
        # two generation lengths on the same compiled graphs (one cache length): the difference is
        # decode steps alone, prefill and per-call work cancel out
        half = new // 2 + 1
        assert model.cache_length(prompt + half) == model.cache_length(prompt + new)
        for n in (half, new):
            generate(ids, n)                  # capture the graphs of this length
        short = median([generate(ids, half)[1] for _ in range(3)])
        full = []
        for _ in range(3):
            out, ms = generate(ids, new)
            full.append(ms)
        one = median([generate(ids, 1)[1] for _ in range(3)])
        res[f"kiln_decode_ms_b{B}"] = (median(full) - short) / (new - half)
        tokens[B] = out[:, prompt:]
        ex = dec.executor
        res[f"kiln_decode_graph_b{B}"] = ex.stats()["cuda_graph"]
        if getattr(ex, "graph_error", None) or getattr(ex, "compile_error", None):
            log(f"  kiln b{B}: graph_error {getattr(ex, 'graph_error', None)} compile_error "
                f"{getattr(ex, 'compile_error', None)}")
        if ex._graph is not None:   # the device time of one step alone (replays back to back, no host work)
            res[f"kiln_decode_replay_ms_b{B}"] = median(cuda_ms(torch, ex._graph.replay, 50))
            log(f"  kiln b{B}: one decode step's CUDA graph alone {res[f'kiln_decode_replay_ms_b{B}']:.3f} ms")
        log(f"  kiln b{B}: decode {res[f'kiln_decode_ms_b{B}']:.3f} ms/step (prefill+first token {one:.2f} ms)")
        if profile and B == batches[0]:
            res["kiln_profile_b%d" % B] = replay_profile(torch, dec.executor, reps=20, what="decode step")
    if prefill > 0:   # prefill latency, 512 tokens (generate of one token: the prefill graph and its argmax)
        ids = np.random.default_rng(1).integers(0, model.graphs.vocab_size, (1, prefill))
        t0 = time.perf_counter()
        model.warmup(1, prefill, 1, select="greedy")
        generate(ids, 1)
        res["kiln_prefill_compile_s"] = time.perf_counter() - t0
        res["kiln_prefill_ms"] = median([generate(ids, 1)[1] for _ in range(10)])
        log(f"  kiln prefill {prefill}: {res['kiln_prefill_ms']:.2f} ms (compile {res['kiln_prefill_compile_s']:.1f}s)")
    model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tokens


# ---- HF peers ------------------------------------------------------------------------------------

def bench_hf(torch, hf, batches, prompt: int, new: int, prefill: int, res: dict, compiled: bool, tokens: dict):
    from transformers import StaticCache
    tag = "compile" if compiled else "eager"
    vocab = hf.config.vocab_size
    for B in batches:
        L = prompt + new + 8
        cache = StaticCache(config=hf.config, max_cache_len=L)
        import numpy as np
        ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (B, prompt))).cuda()

        def step(tok, pos, cache_position):
            return hf(input_ids=tok, position_ids=pos, cache_position=cache_position, past_key_values=cache,
                      use_cache=True).logits[:, -1]

        fn = torch.compile(step, mode="reduce-overhead", fullgraph=True) if compiled else step

        def decode(steps: int):
            cache.reset()
            out = hf(input_ids=ids, cache_position=torch.arange(prompt, device="cuda"), past_key_values=cache,
                     use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            chosen = [tok]
            pos = torch.full((B, 1), prompt, dtype=torch.int64, device="cuda")
            cpos = torch.tensor([prompt], dtype=torch.int64, device="cuda")
            for i in range(steps):
                if compiled:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = fn(tok, pos, cpos)
                tok = logits.argmax(-1, keepdim=True).clone()
                chosen.append(tok)
                pos = pos + 1
                cpos = cpos + 1
            return chosen

        def prefill_only():
            cache.reset()
            return hf(input_ids=ids, cache_position=torch.arange(prompt, device="cuda"), past_key_values=cache,
                      use_cache=True, logits_to_keep=1)

        with torch.no_grad():
            t0 = time.perf_counter()
            decode(3)
            torch.cuda.synchronize()
            res[f"{tag}_warmup_s_b{B}"] = time.perf_counter() - t0
            pre_ms = median(cuda_ms(torch, prefill_only, 3))
            reps = 3 if compiled else 1
            total = median(cuda_ms(torch, lambda: decode(new), reps))
            res[f"{tag}_decode_ms_b{B}"] = (total - pre_ms) / new
            tokens[B] = torch.cat(decode(new), 1)[:, :new].cpu().numpy()   # the prefill's token + new - 1, as kiln's
        log(f"  {tag} b{B}: warm-up {res[f'{tag}_warmup_s_b{B}']:.1f}s, decode {res[f'{tag}_decode_ms_b{B}']:.3f} ms/step")
        cache = fn = None
        if compiled:
            torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
    if prefill <= 0:
        return tokens
    # prefill 512
    cache = StaticCache(config=hf.config, max_cache_len=prefill)
    import numpy as np
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, vocab, (1, prefill))).cuda()
    cpos = torch.arange(prefill, device="cuda")

    def pf(ids, cpos):
        return hf(input_ids=ids, cache_position=cpos, past_key_values=cache, use_cache=True, logits_to_keep=1).logits

    fn = torch.compile(pf, mode="reduce-overhead", fullgraph=True) if compiled else pf

    def run():
        cache.reset()   # (HF counts the cache's filled slots: a second prefill must start empty)
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        return fn(ids, cpos)

    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        res[f"{tag}_prefill_warmup_s"] = time.perf_counter() - t0
        res[f"{tag}_prefill_ms"] = median(cuda_ms(torch, run, 10))
    log(f"  {tag} prefill {prefill}: {res[f'{tag}_prefill_ms']:.2f} ms (warm-up {res[f'{tag}_prefill_warmup_s']:.1f}s)")
    cache = fn = None
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    return tokens


# ---- matmul configurations for the decode shapes ----------------------------------------------

def sweep_matmul(torch, cfg: dict, batches, bw: float) -> list:
    """Device time of the fused decode matmuls for several Triton block configurations vs cuBLAS."""
    import itertools

    import triton.testing
    from kiln.backends.triton.kernels.gemv import MAX_M, Gemv
    from kiln.backends.triton.kernels.matmul import Matmul

    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * cfg["head_dim"]
    shapes = [("qkv+norm", qkv, h, dict(norm="rms_norm")), ("o+res", h, h, dict(has_residual=True)),
              ("gate_up+norm+swiglu", inter, h, dict(norm="rms_norm", activation="swiglu")),
              ("down+res", h, inter, dict(has_residual=True)), ("head+norm", v, h, dict(norm="rms_norm"))]
    configs = [dict(BM=16, BN=bn, BK=bk, GROUP_M=8, num_warps=w, num_stages=3)
               for bn, bk, w in itertools.product((16, 32, 64), (128, 256), (4,))]
    rows = []
    bf = torch.bfloat16
    for M in batches:
        for name, N, K, kw in shapes:
            width = 2 * N if kw.get("activation") == "swiglu" else N
            a = torch.randn(1, M, K, device="cuda", dtype=bf)
            w = torch.randn(width, K, device="cuda", dtype=bf) * 0.05
            c = torch.empty(1, M, N, device="cuda", dtype=bf)
            r = torch.randn(1, M, N, device="cuda", dtype=bf)
            nw = torch.ones(K, device="cuda", dtype=bf)
            res = {}
            for conf in configs:
                k = Matmul(M, N, K, 1, bf, cfg=conf, **kw)
                args = (a, w.t().unsqueeze(0), c, None, r if kw.get("has_residual") else None,
                        nw if kw.get("norm") else None, None)
                res[(conf["BN"], conf["BK"], conf["num_warps"])] = triton.testing.do_bench(
                    lambda: k(*args), warmup=25, rep=100, return_mode="median") * 1e3
            gemv = {}
            if M <= MAX_M:
                for bn, bk, nw_ in itertools.product((2, 4, 8, 16), (128, 256, 512, 1024), (4, 8)):
                    if triton.next_power_of_2(M) * bn * bk > 8192:
                        continue
                    k = Gemv(M, N, K, bf, cfg=dict(BM=triton.next_power_of_2(M), BN=bn, BK=bk, num_warps=nw_), **kw)
                    args = (a, w.t().unsqueeze(0), c, None, r if kw.get("has_residual") else None,
                            nw if kw.get("norm") else None, None)
                    gemv[(bn, bk, nw_)] = triton.testing.do_bench(
                        lambda: k(*args), warmup=25, rep=100, return_mode="median") * 1e3
                gk = Gemv(M, N, K, bf, **kw)
                gemv_default = triton.testing.do_bench(lambda: gk(*args), warmup=25, rep=100,
                                                       return_mode="median") * 1e3
                gbest = min(gemv, key=gemv.get)
                byte_us = width * K * 2 / bw * 1e6     # the weight read once at copy bandwidth
                log(f"    M={M} {name:22s} gemv best {gbest} {gemv[gbest]:6.1f} us, default {gk.cfg['BN'], gk.cfg['BK'], gk.cfg['num_warps']} "
                    f"{gemv_default:6.1f} us, weight at copy bandwidth {byte_us:6.1f} us")
            cub = triton.testing.do_bench(lambda: torch.matmul(a[0], w.t()), warmup=25, rep=100,
                                          return_mode="median") * 1e3
            best = min(res, key=res.get)
            default = Matmul(M, N, K, 1, bf, **kw).cfg
            dkey = (default["BN"], default["BK"], default["num_warps"])
            log(f"    M={M} {name:22s} N={N:6d} K={K:5d}: best {best} {res[best]:6.1f} us, "
                f"default {dkey} {res.get(dkey, float('nan')):6.1f} us, cuBLAS (no fusion) {cub:6.1f} us")
            rows.append(dict(M=M, shape=name, N=N, K=K, best=best, best_us=res[best], default_us=res.get(dkey),
                             cublas_us=cub, all={str(k): v for k, v in res.items()},
                             gemv={str(k): v for k, v in gemv.items()}))
    return rows


# ---- main ------------------------------------------------------------------------------------------

def roofline_ms(cfg: dict, B: int, prompt: int, new: int, bw: float) -> float:
    h, inter, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    per_layer = h * (heads + 2 * kv) * hd + heads * hd * h + 3 * h * inter + 2 * h
    weights = 2 * (n * per_layer + v * h + h)                   # bf16; the tied head reads the table once
    ctx = prompt + new / 2                                      # mean context over the decode
    kv_bytes = 2 * n * 2 * B * kv * ctx * hd                    # keys and values, bf16
    return (weights + kv_bytes) / bw * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="135m,360m")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--peers", default="eager,kiln,compile")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512, help="prefill length to time (0: no prefill rows)")
    ap.add_argument("--profile", action="store_true", help="kiln: device time per kernel of one decode step")
    ap.add_argument("--sweep", action="store_true", help="time decode matmul block configurations first")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)   # PEER:CKPT:OUT, one peer in this process
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    import torch
    import transformers

    if not torch.cuda.is_available():
        log("bench/llm.py needs a CUDA GPU")
        return 1
    batches = [int(b) for b in args.batches.split(",")]
    peers = args.peers.split(",")
    bw = hbm_bandwidth(torch)
    dev = torch.cuda.get_device_name()
    log(f"{dev}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"copy bandwidth {bw / 1e12:.2f} TB/s; each peer in its own process")
    results = {"device": dev, "bandwidth_Bps": bw, "torch": torch.__version__,
               "transformers": transformers.__version__, "models": {}}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    for name in args.models.split(","):
        cfg = CONFIGS[name]
        res = results["models"][name] = {}
        log(f"SmolLM2-{name.upper()} shape, bfloat16, random weights")
        torch.manual_seed(0)
        hf_cfg = transformers.LlamaConfig(**cfg, initializer_range=0.02, bos_token_id=None, eos_token_id=None,
                                          pad_token_id=None)
        hf = transformers.LlamaForCausalLM(hf_cfg).to(dtype=torch.bfloat16).eval()
        ckpt = Path(tempfile.mkdtemp(prefix=f"smollm2-{name}-"))
        hf.save_pretrained(ckpt)
        res["params"] = sum(p.numel() for p in hf.parameters())
        del hf
        if args.sweep:
            res["matmul_sweep"] = sweep_matmul(torch, cfg, batches, bw)
            save()
        toks = {}
        for peer in peers:   # one process per peer: a crash or a hang loses only that peer
            out = Path(tempfile.mkdtemp(prefix=f"{peer}-")) / "result.json"
            cmd = [sys.executable, __file__, "--worker", f"{peer}:{ckpt}:{out}", "--models", name,
                   "--batches", args.batches, "--prompt", str(args.prompt), "--new", str(args.new),
                   "--prefill", str(args.prefill)] + (["--profile"] if args.profile else [])
            proc = subprocess.run(cmd)
            if out.is_file():
                got = json.loads(out.read_text())
                res.update(got["res"])
                toks[peer] = {int(b): np.asarray(t) for b, t in got["tokens"].items()}
            if proc.returncode != 0:
                res.setdefault(f"{peer}_error", f"worker exited with status {proc.returncode}")
            save()
        for B in batches:
            res[f"roofline_ms_b{B}"] = roofline_ms(cfg, B, args.prompt, args.new, bw)
            if "kiln" in toks and B in toks["kiln"]:
                for peer in ("eager", "compile"):
                    if peer in toks and B in toks[peer]:
                        res[f"kiln_vs_{peer}_same_tokens_b{B}"] = float((toks["kiln"][B] == toks[peer][B]).mean())
        save()
    print_table(results, batches)
    save()
    return 0


def worker(args) -> int:
    """One peer on one saved checkpoint; writes {"res": numbers, "tokens": {batch: ids}} to OUT."""
    peer, ckpt, out = args.worker.split(":", 2)
    cold_caches()
    import torch
    import transformers

    batches = [int(b) for b in args.batches.split(",")]

    class Autosave(dict):
        """Every number is on disk as soon as it is measured: a later crash (a segfault) keeps it."""
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            save()

    def save():
        Path(out).write_text(json.dumps({"res": res, "tokens": {str(b): np.asarray(t).tolist()
                                                                for b, t in tokens.items()}}, default=str))
    res: dict = Autosave()
    tokens: dict = Autosave()   # a crash in the prefill part keeps the decode tokens for the comparison
    try:
        if peer == "kiln":
            bench_kiln(torch, Path(ckpt), batches, args.prompt, args.new, args.prefill, res, args.profile, tokens)
            x = torch.randn(256, 256, device="cuda")      # the device is still healthy
            torch.testing.assert_close(x @ x, (x.double() @ x.double()).float(), rtol=1e-3, atol=1e-3)
        else:
            hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).to("cuda").eval()
            bench_hf(torch, hf, batches, args.prompt, args.new, args.prefill, res, peer == "compile", tokens)
    except Exception as e:  # report what was measured so far
        import traceback
        traceback.print_exc()
        res[f"{peer}_error"] = f"{type(e).__name__}: {e}"
        save()
        return 1
    save()
    return 0


def print_table(results: dict, batches) -> None:
    def f(x, fmt="{:.3f}"):
        return fmt.format(x) if isinstance(x, (int, float)) else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"

    log("\n| model | metric | kiln | HF eager | torch.compile | kiln/eager | kiln/compile | roofline | kiln % of roofline |")
    log("|---|---|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        for B in batches:
            k, e, c = r.get(f"kiln_decode_ms_b{B}"), r.get(f"eager_decode_ms_b{B}"), r.get(f"compile_decode_ms_b{B}")
            roof = r.get(f"roofline_ms_b{B}")
            pct = f"{100 * roof / k:.0f}%" if isinstance(k, float) and roof else "-"
            log(f"| {name} | decode ms/step b{B} | {f(k)} | {f(e)} | {f(c)} | {ratio(k, e)} | {ratio(k, c)} | "
                f"{f(roof)} | {pct} |")
        k, e, c = r.get("kiln_prefill_ms"), r.get("eager_prefill_ms"), r.get("compile_prefill_ms")
        log(f"| {name} | prefill 512 ms | {f(k, '{:.2f}')} | {f(e, '{:.2f}')} | {f(c, '{:.2f}')} | {ratio(k, e)} | "
            f"{ratio(k, c)} | | |")
        for B in batches:
            k, c = r.get(f"kiln_compile_s_b{B}"), r.get(f"compile_warmup_s_b{B}")
            log(f"| {name} | compile / warm-up s b{B} | {f(k, '{:.1f}')} | {f(r.get(f'eager_warmup_s_b{B}'), '{:.1f}')} "
                f"| {f(c, '{:.1f}')} | | {ratio(k, c)} | | |")
        for B in batches:
            for peer in ("eager", "compile"):
                v = r.get(f"kiln_vs_{peer}_same_tokens_b{B}")
                if v is not None:
                    log(f"| {name} | greedy tokens equal to {peer} b{B} | {v:.0%} | | | | | | |")
        for key, v in r.items():
            if key.endswith("_error"):
                log(f"| {name} | {key} | {v} | | | | | | |")


if __name__ == "__main__":
    sys.exit(main())
