"""Training-step benchmark on one GPU: kiln (Triton backend) vs torch eager vs torch.compile, in one run.

The step: a SmolLM2-135M-shaped Llama (hidden 576, 30 layers, 9 heads / 3 kv heads of 64,
intermediate 1536, vocab 49152, tied embeddings), batch 8 x 512 tokens, next-token
cross-entropy (logits[:, :-1] against input_ids[:, 1:]), AdamW (lr 1e-4, betas 0.9/0.999,
eps 1e-8, weight decay 0.01, no clipping), bfloat16 compute with float32 master weights.
All peers start from the same random weights (HF's init, saved with `save_pretrained` and
read back by kiln's checkpoint loader) and train on the same batch.

- kiln: the model graph from `kiln.models.llama` in bfloat16 whose parameters are float32
  masters cast to bfloat16 on use; `kiln.train.build_step_graph` adds the backward pass and
  the fused AdamW update, e-graph optimizer on, timed through the public API,
  `TrainStep(device="cuda")`: parameters and optimizer state are states of the compiled step on
  the GPU, updated in place; a step uploads its batch and brings back the loss and grad norm.
- torch eager: HF `LlamaForCausalLM` in float32 under `torch.autocast(bfloat16)`,
  `torch.optim.AdamW(fused=True)`.
- torch.compile: the same, with the forward + loss compiled by `torch.compile` (default mode;
  AOTAutograd compiles the backward) and the same fused AdamW.

Reported: ms per step (median of --steps timed steps after --warmup), the ratios kiln/peer,
tokens/s, kiln's compile time (graph build + plan + kernel compile + the first step, cold
kernel caches) and each peer's warm-up, and the loss of the first steps of every peer (the
check that they train the same model).

    python bench/train.py                                   # full size on the GPU
    python bench/train.py --device cpu --layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 \\
        --intermediate 128 --vocab 256 --batch 2 --seq 16    # tiny, on the CPU (Triton interpreter)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from timing import cold_caches, log, median, replay_profile
from timing import cuda_ms as step_ms

LR, BETAS, EPS, WD = 1e-4, (0.9, 0.999), 1e-8, 0.01


# ---- the model and data --------------------------------------------------------------------------

def hf_config(args):
    import transformers
    return transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        vocab_size=args.vocab, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
        max_position_embeddings=max(8192, args.seq), initializer_range=0.02, bos_token_id=None,
        eos_token_id=None, pad_token_id=None)


# ---- kiln ------------------------------------------------------------------------------------------

def kiln_loss_graph(cfg, batch: int, seq: int, precision: str):
    """The Llama prefill graph with a next-token cross-entropy `loss` as its only output.

    With precision "mixed" the graph computes in bfloat16 and its parameters are float32
    masters, cast to bfloat16 where they are used (so gradients and the update are float32)."""
    from kiln.models.llama import LlamaGraphs
    from kiln.train import cross_entropy

    compute = "bfloat16" if precision == "mixed" else "float32"
    g = LlamaGraphs(cfg, compute).prefill_graph(batch, seq)
    # labels[:, t] = input_ids[:, t + 1], the last position ignored (-100): the same loss as slicing
    # logits[:, :-1], without a slice whose gradient pads a [B, S, V] tensor
    loss = cross_entropy(g, g.outputs["logits"], g.input("labels", (batch, seq), "int64"))
    g.outputs = {"loss": loss}
    return with_master_weights(g, "float32") if compute != "float32" else g


def with_master_weights(g, master: str):
    """A copy of g whose float parameters have dtype `master`, each cast to its old dtype where used."""
    from kiln.autodiff.transform import copy_node
    from kiln.ir import Graph

    out, env = Graph(g.name + "_master_" + master), {}
    for node in g.nodes:
        v = node.outputs[0] if node.outputs else None
        if node.op == "parameter" and v.dtype.is_float and v.dtype.name != master:
            env[v.id] = out.cast(out.parameter(node.name, v.shape, master), dtype=v.dtype.name)
        else:
            copy_node(out, node, env)
    out.outputs = {k: env[v.id] for k, v in g.outputs.items()}
    return out


def bench_kiln(torch, args, ckpt: Path, batch: dict, res: dict) -> None:
    import numpy as np

    from kiln.io.safetensors_file import load_checkpoint_dir
    from kiln.io.weight_map import WeightMap
    from kiln.models.llama import llama_params, read_llama_config

    cfg, _, filename = read_llama_config(ckpt)
    params = llama_params(WeightMap(load_checkpoint_dir(ckpt, filename=filename), source=str(ckpt)), cfg, "float32")
    ids = batch["input_ids"]
    feeds = {**batch, "labels": np.concatenate([ids[:, 1:], np.full((ids.shape[0], 1), -100, ids.dtype)], axis=1)}
    from kiln.train import AdamW, TrainStep

    t0 = time.perf_counter()
    loss_graph = kiln_loss_graph(cfg, args.batch, args.seq, args.precision)
    step = TrainStep(loss_graph, AdamW(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD), device="cuda")
    step.init(params)                                       # uploads once; the state stays on the GPU
    t_built = time.perf_counter()
    losses = [step(feeds, lr=LR)["loss"]]                   # compiles every kernel, runs step 1 eagerly
    res["kiln_compile_s"] = time.perf_counter() - t0
    res["kiln_first_step_s"] = time.perf_counter() - t_built
    for _ in range(args.warmup - 1):                        # the second run captures the CUDA graph
        losses.append(step(feeds, lr=LR)["loss"])
    ex, report = step._fused.executor, step._fused.report
    st = ex.stats()
    res["kiln_stages"] = {"plan_pipeline": report.stage_seconds, "executor": st["stage_seconds"]}
    res["kiln_launches"], res["kiln_by_archetype"] = st["launches"], st["by_archetype"]
    res["kiln_fallbacks"], res["kiln_cuda_graph"] = st["fallbacks"], st["cuda_graph"]
    res["kiln_arena_gib"] = st["arena_bytes"] / 2**30
    res["kiln_optimized"] = report.optimized
    for attr in ("compile_error", "graph_error"):
        if getattr(ex, attr, None):
            res[f"kiln_{attr}"] = getattr(ex, attr)
    log(f"  kiln: compile {res['kiln_compile_s']:.1f}s (first step {res['kiln_first_step_s']:.1f}s), "
        f"{st['launches']} launches {st['by_archetype']}, fallbacks {st['fallbacks']}, cuda graph {st['cuda_graph']}, "
        f"arena {res['kiln_arena_gib']:.2f} GiB, optimized {report.optimized}")
    res["kiln_ms"] = median(step_ms(torch, lambda: step(feeds, lr=LR), args.steps))
    res["kiln_losses"] = losses
    log(f"  kiln: {res['kiln_ms']:.2f} ms/step, losses {', '.join(f'{x:.5f}' for x in losses)}")
    if args.profile:
        res["kiln_profile"] = profile_launches(torch, ex)
        if torch.cuda.is_available():
            res["kiln_replay_profile"] = replay_profile(torch, ex, reps=3, what="training step", top=40)


def profile_launches(torch, ex, reps: int = 3) -> list:
    """Device time per launch label (events around every launch of an eager pass), top 15.

    Each pass is a training step: the batch is fed first (inputs live in the arena, whose bytes
    the previous pass reused; stale token ids would index out of bounds)."""
    from collections import defaultdict
    times, counts = defaultdict(float), defaultdict(int)
    gpu = torch.cuda.is_available()
    for _ in range(reps):
        evs = []
        for fn, fargs in ex.calls:
            if gpu:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(*fargs)
                e.record()
                evs.append((s, e))
            else:   # (a CPU smoke run: wall clock per launch)
                t = time.perf_counter()
                fn(*fargs)
                evs.append((time.perf_counter() - t) * 1e3)
        if gpu:
            torch.cuda.synchronize()
            evs = [s.elapsed_time(e) for s, e in evs]
        for ms, launch in zip(evs, ex.program.launches):
            times[launch.label] += ms / reps
            counts[launch.label] += 1
    rows = sorted(times.items(), key=lambda kv: -kv[1])
    log(f"    per-launch device time, eager pass: {sum(times.values()):.2f} ms over {len(ex.calls)} launches")
    for label, ms in rows[:15]:
        log(f"      {ms:8.3f} ms  x{counts[label] // reps:3d}  {label[:110]}")
    return [(label, ms, counts[label] // reps) for label, ms in rows]


# ---- torch peers -----------------------------------------------------------------------------------

def bench_torch(torch, args, ckpt: Path, batch: dict, res: dict, compiled: bool) -> None:
    import torch.nn.functional as F
    import transformers

    tag = "compile" if compiled else "eager"
    dev = "cuda" if args.device == "cuda" else "cpu"
    model = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(dev).train()
    mixed = args.precision == "mixed"
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                            fused=dev == "cuda")
    ids = torch.from_numpy(batch["input_ids"]).to(dev)
    labels = ids[:, 1:].contiguous()
    vocab = model.config.vocab_size

    def loss_fn(ids, labels):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=mixed):
            logits = model(input_ids=ids).logits
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), labels.reshape(-1))

    fwd = torch.compile(loss_fn) if compiled else loss_fn
    last = {}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd(ids, labels)
        loss.backward()
        opt.step()
        last["loss"] = loss

    t0 = time.perf_counter()
    losses = []
    for _ in range(args.warmup):
        step()
        losses.append(float(last["loss"].detach()))
    res[f"{tag}_warmup_s"] = time.perf_counter() - t0
    res[f"{tag}_ms"] = median(step_ms(torch, step, args.steps))
    res[f"{tag}_losses"] = losses
    log(f"  {tag}: {res[f'{tag}_ms']:.2f} ms/step (warm-up {res[f'{tag}_warmup_s']:.1f}s), "
        f"losses {', '.join(f'{x:.5f}' for x in losses)}")
    if compiled:
        torch._dynamo.reset()


# ---- main ------------------------------------------------------------------------------------------

def print_table(res: dict, args) -> None:
    def f(x, fmt="{:.2f}"):
        return fmt.format(x) if isinstance(x, (int, float)) else "-"

    def ratio(a, b):
        return f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"

    k, e, c = res.get("kiln_ms"), res.get("eager_ms"), res.get("compile_ms")
    tokens = args.batch * args.seq
    kdt = "bf16 compute, fp32 master" if args.precision == "mixed" else "float32"
    log(f"\n{res.get('device', '?')}: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, "
        f"batch {args.batch} x {args.seq}, AdamW, {kdt} (all peers)")
    log("| metric | kiln | torch eager | torch.compile | kiln / eager | kiln / compile |")
    log("|---|---|---|---|---|---|")
    log(f"| ms / step | {f(k)} | {f(e)} | {f(c)} | {ratio(k, e)} | {ratio(k, c)} |")
    tps = [tokens / (x * 1e-3) if isinstance(x, (int, float)) else None for x in (k, e, c)]
    log(f"| tokens / s | {' | '.join(f(x, '{:,.0f}') for x in tps)} | | |")
    log(f"| compile / warm-up s | {f(res.get('kiln_compile_s'), '{:.1f}')} | "
        f"{f(res.get('eager_warmup_s'), '{:.1f}')} | {f(res.get('compile_warmup_s'), '{:.1f}')} | | "
        f"{ratio(res.get('kiln_compile_s'), res.get('compile_warmup_s'))} |")
    n = max((len(res.get(f"{p}_losses", [])) for p in ("kiln", "eager", "compile")), default=0)
    for i in range(min(n, 3)):
        vals = [res.get(f"{p}_losses", [])[i] if i < len(res.get(f"{p}_losses", [])) else None
                for p in ("kiln", "eager", "compile")]
        log(f"| loss at step {i + 1} | {' | '.join(f(x, '{:.5f}') for x in vals)} | | |")
    for key, v in res.items():
        if key.endswith("_error"):
            log(f"| {key} | {v} | | | | |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: kiln's Triton kernels in Triton's interpreter, torch on the CPU (tiny sizes)")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--precision", choices=("mixed", "float32"), default="mixed",
                    help="mixed: bfloat16 compute with float32 master weights (every peer)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per peer")
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing (>= 2: kiln captures on the 2nd)")
    ap.add_argument("--peers", default="kiln,eager,compile")
    ap.add_argument("--profile", action="store_true", help="kiln: device time per launch")
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args(argv)
    if args.warmup < 2:
        ap.error("--warmup must be at least 2")
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"     # before any kernel module is imported
    cold_caches()
    import numpy as np
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        log("bench/train.py --device cuda needs a CUDA GPU (use --device cpu at a tiny size)")
        return 1
    devname = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter)"
    res = {"device": devname, "torch": torch.__version__, "transformers": transformers.__version__,
           "args": vars(args)}
    log(f"{devname}, torch {torch.__version__}, transformers {transformers.__version__}")

    def finish(*_):
        print_table(res, args)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        sys.stdout.flush()

    def on_term(signum, frame):   # `timeout` ends a run: still print what was measured
        log(f"\nstopped by signal {signum}; results so far:")
        finish()
        os._exit(124)

    signal.signal(signal.SIGTERM, on_term)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config(args))
    res["params"] = sum(p.numel() for p in hf.parameters())
    ckpt = Path(tempfile.mkdtemp(prefix="bench-train-ckpt-"))
    hf.save_pretrained(ckpt)
    del hf
    batch = {"input_ids": np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq)),
             "attention_mask": np.ones((args.batch, args.seq), np.int64),
             "position_ids": np.broadcast_to(np.arange(args.seq), (args.batch, args.seq)).copy()}
    log(f"Llama {res['params'] / 1e6:.1f}M parameters, batch {args.batch} x {args.seq}, {args.precision}")
    for peer in args.peers.split(","):
        try:
            if peer == "kiln":
                bench_kiln(torch, args, ckpt, batch, res)
            elif peer in ("eager", "compile"):
                bench_torch(torch, args, ckpt, batch, res, compiled=peer == "compile")
            else:
                raise ValueError(f"unknown peer {peer!r}; expected kiln, eager or compile")
        except Exception as e:  # noqa: BLE001 -- report and go on with the other peers
            import traceback
            traceback.print_exc()
            res[f"{peer}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            res[f"{peer}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
