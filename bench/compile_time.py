"""Compile time, cold and warm, each measurement in a fresh Python process.

Workloads:
- primitive (default): the 30-layer Llama written from primitive ops (bench/llama_primitive_graph.py,
  SmolLM2-135M dimensions), compile_graph by stage; every fusion has to be discovered.
- pair: SmolLM2-135M's prefill + decode graphs through the public API (`CausalLM.warmup` then the
  first `generate`, bfloat16 on cuda, float32 on cpu): plan + bind, then the first run, which on
  cuda compiles the Triton kernels (concurrently: kiln/backends/triton/precompile.py) and captures
  the CUDA graphs.
- train: a 135M-shaped training step (bench/train.py's graph: batch 8 x 512, bfloat16 compute,
  float32 masters, AdamW) through `TrainStep`: plan + bind, then the first step.

Devices: cpu (NumPy backend), cuda (Triton on the GPU), sm90 (no GPU needed: the graphs are planned
for cuda and their Triton kernels compiled for an sm_90 target, compile only; what the GPU's first
run spends compiling, minus loading the binaries; bench/compile_only_target.py).

Scenarios: cold (empty KILN_CACHE_DIR and TRITON_CACHE_DIR), warm (the same directories again, as
the cold run left them: plans from kiln's compile cache, binaries from Triton's), plans (plans
cached, Triton's cache empty: the kernel compile alone). Times exclude importing kiln (its Triton
backend included), torch and Triton, and on cuda creating the CUDA context (`cuda_init_s`, printed
as "cuda init": paid once per process, whatever is compiled). Python bytecode for kiln and Triton is
compiled before the first child, as an installed package has it (`bytecode_prefix`).

    python bench/compile_time.py [--repeat 3] [--seq 16] [--json]                 # primitive, CPU side
    python bench/compile_time.py --workload pair,train --device cuda                # on the GPU
    python bench/compile_time.py --workload pair --device cuda --threads 1,4,16    # thread scaling
    python bench/compile_time.py --workload pair --device sm90 --threads 1,2       # here, no GPU
    python bench/compile_time.py --workload pair,train --device cpu --tiny         # smoke run
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ---- children (one measurement each, in a fresh process) -----------------------------------------


def _config(tiny: bool):
    from kiln.models.llama import LlamaConfig
    from kiln.nn.rope import RopeConfig
    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=256) if tiny else \
        dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, head_dim=64, vocab_size=49152)
    return LlamaConfig(model_type="llama", tie_word_embeddings=True, rms_norm_eps=1e-5,
                       rope=RopeConfig(theta=100000.0), max_position_embeddings=8192, **dims)


def _zeros(types: dict) -> dict:
    import numpy as np
    return {n: np.zeros(t.shape, t.dtype.np_dtype) for n, t in types.items()}


def _feeds(types: dict) -> dict:
    import numpy as np
    out = {}
    for n, t in types.items():
        a = np.zeros(t.shape, t.dtype.np_dtype)
        if "mask" in n:
            a[...] = 1
        elif "position" in n:
            a[...] = np.arange(t.shape[-1])
        out[n] = a
    return out


def _graph_rows(items) -> list[dict]:
    """Per compiled graph: where its plan came from and what binding and the first run cost."""
    rows = []
    for name, cg in items:
        r = cg.report
        row = {"graph": name, "plan_cache": r.cache, "plan_s": r.total_seconds,
               "cold_plan_s": sum(r.cold_stage_seconds.values())}
        stats = getattr(cg.executor, "stats", None)
        if stats is not None:
            st = stats()
            row["executor_stages"] = st["stage_seconds"]
            row["precompile"] = st.get("precompile")
            row["compile_workers"] = st.get("compile_workers")
            row["launches"] = st["launches"]
        rows.append(row)
    return rows


def child_pair(o: dict) -> dict:
    import numpy as np

    from kiln.models.llama import LlamaGraphs
    from kiln.runtime.language_model import CausalLM

    dtype = "bfloat16" if o["device"] == "cuda" else "float32"
    graphs = LlamaGraphs(_config(o["tiny"]), dtype)
    params = _zeros({n: v.type for n, v in graphs.prefill_graph(1, 8).parameters.items()})
    model = CausalLM(graphs, params, device=o["device"], dtype=dtype)
    ids = np.ones((1, o["prompt"]), np.int64)
    sync = _sync(o["device"])
    t = time.perf_counter()
    model.warmup(1, o["prompt"], o["new"], select="greedy")       # plan (or read the plan) + bind
    plan_bind = time.perf_counter() - t
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=o["new"], eos_token_id=[])  # first runs (same graphs): kernels compile
    sync()
    first = time.perf_counter() - t
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=o["new"], eos_token_id=[])
    sync()
    again = time.perf_counter() - t
    return {"plan_bind_s": plan_bind, "first_run_s": first, "steady_run_s": again, "graphs_compiled": model.compiles,
            "compile_s": plan_bind + first - again,
            "graphs": _graph_rows((f"{k[0]} {k[1:-2]}", cg) for k, cg in model._compiled.items())}


def child_train(o: dict) -> dict:
    sys.path.insert(0, HERE)
    import train as T

    from kiln.train import AdamW, TrainStep

    batch, seq = (2, 16) if o["tiny"] else (8, 512)
    loss_graph = T.kiln_loss_graph(_config(o["tiny"]), batch, seq, "mixed")
    sync = _sync(o["device"])
    t = time.perf_counter()
    step = TrainStep(loss_graph, AdamW(lr=T.LR, betas=T.BETAS, eps=T.EPS, weight_decay=T.WD), device=o["device"])
    step.init(_zeros(step.param_types))
    plan_bind = time.perf_counter() - t
    feeds = _feeds({n: v.type for n, v in loss_graph.inputs.items()})
    t = time.perf_counter()
    step(feeds, lr=T.LR)
    sync()
    first = time.perf_counter() - t
    t = time.perf_counter()
    step(feeds, lr=T.LR)
    sync()
    again = time.perf_counter() - t
    return {"plan_bind_s": plan_bind, "first_run_s": first, "steady_run_s": again,
            "compile_s": plan_bind + first - again, "graphs": _graph_rows([("train step", step._fused)])}


def cuda_graphs(workload: str, tiny: bool, prompt: int = 128, new: int = 32) -> list:
    """The graphs a workload compiles for cuda, built as the public API builds them: the pair's
    greedy prefill and self-feeding decode (cache rounded up to 64), or the AdamW training step."""
    from kiln.models.llama import LlamaGraphs
    from kiln.runtime.language_model import _feed_itself, _select_greedy

    cfg = _config(tiny)
    if workload == "pair":
        graphs = LlamaGraphs(cfg, "bfloat16")
        cache_len = -(-(prompt + new) // 64) * 64
        pre = graphs.prefill_graph(1, prompt, last_only=True, cache_len=cache_len)
        _select_greedy(pre)
        dec = graphs.decode_graph(1, cache_len)
        _select_greedy(dec)
        _feed_itself(dec, (), None)
        return [pre, dec]
    sys.path.insert(0, HERE)
    import train as T

    from kiln.train import AdamW
    from kiln.train.step import _updates_as_states, build_step_graph, state_name
    batch, seq = (2, 16) if tiny else (8, 512)
    g = T.kiln_loss_graph(cfg, batch, seq, "mixed")
    opt = AdamW(lr=T.LR)
    names = [n for n, v in g.parameters.items() if v.dtype.is_float]
    step = build_step_graph(g, opt, trainable=names)
    _updates_as_states(step, names + [state_name(s, n) for n in names for s in opt.slots])
    return [step]


def child_sm90(o: dict) -> dict:
    """Plan for cuda and compile every Triton kernel for sm_90 (compile only), no GPU."""
    sys.path.insert(0, HERE)
    import compile_only_target as C

    from kiln.api import reference_evaluate
    from kiln.backends.triton import compile_workers, kernels_on_disk
    from kiln.backends.triton.precompile import PrecompileStats, compile_threads, precompile, start_triton_key
    from kiln.compile import compile_graph

    C.install()
    todo = cuda_graphs(o["workload"], o["tiny"], o["prompt"], o["new"])
    start_triton_key()
    out = {"plan_bind_s": 0.0, "first_run_s": 0.0, "graphs": []}
    bound = []
    for g in todo:   # as on the GPU: each executor's compile workers start at bind, the next graph plans
        t = time.perf_counter()
        plan, report = compile_graph(g, device="cuda", evaluate=reference_evaluate)
        ex = C.executor(plan)
        known = kernels_on_disk.on_disk(report.cache_key)
        workers = None if known else compile_workers.start(ex.program.launches, ex.calls)   # None: KILN_COMPILE_WORKERS=0
        out["plan_bind_s"] += time.perf_counter() - t
        bound.append((g, report, ex, workers, known))
    for g, report, ex, workers, known in bound:   # the first runs
        t = time.perf_counter()   # wall time: precompile's own seconds leave out waiting for Triton's hash
        ws = workers.wait() if workers is not None else None
        with kernels_on_disk.Recorder() as rec:
            # "on disk": the GPU's eager pass then specializes each launch and reads its binary; a serial
            # compile-only pass stands in for that here (there is no eager pass without a GPU)
            st = precompile(ex.program.launches, ex.calls, mode="serial") if known else \
                PrecompileStats(launches=ws.distinct, threads=ws.workers, mode="workers", seconds=ws.seconds) \
                if ws is not None and ws.complete else \
                precompile(ex.program.launches, ex.calls, mode="serial" if compile_threads() <= 1 else None)
        if not known:
            kernels_on_disk.store(report.cache_key, rec.seen)
        out["first_run_s"] += time.perf_counter() - t
        out["graphs"].append({"graph": g.name, "plan_cache": report.cache, "plan_s": report.total_seconds,
                              "cold_plan_s": sum(report.cold_stage_seconds.values()),
                              "executor_stages": ex.stage_seconds, "precompile": vars(st),
                              "compile_workers": vars(ws) if ws is not None else None,
                              "launches": len(ex.program.launches)})
    out["compile_s"] = out["plan_bind_s"] + out["first_run_s"]
    triton_dir = os.environ.get("TRITON_CACHE_DIR", "")
    out["triton_cache_entries"] = len(os.listdir(triton_dir)) if os.path.isdir(triton_dir) else 0
    return out


def child_primitive(o: dict) -> dict:
    t0 = time.perf_counter()
    from kiln.api import reference_evaluate
    from kiln.compile import compile_graph
    t_import = time.perf_counter() - t0
    sys.path.insert(0, HERE)
    import llama_primitive_graph as L
    t = time.perf_counter()
    g = L.build(L.SMOLLM2_135M, seq=o["seq"])
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    plan, report = compile_graph(g, evaluate=reference_evaluate)
    t_compile = time.perf_counter() - t
    return dict(import_kiln=t_import, build_graph=t_build, compile=t_compile, plan_cache=report.cache,
                stages=report.stage_seconds, nodes_before=report.nodes_before,
                nodes_after=report.nodes_after, fusions=report.fusions, kernels=report.kernels,
                views=report.views, egraph_enodes=report.egraph_enodes,
                peak_planned=report.peak_bytes_planned, peak_unplanned=report.peak_bytes_unplanned,
                fell_back=report.optimizer_fell_back)


def _sync(device: str):
    if device != "cuda":
        return lambda: None
    import torch
    return torch.cuda.synchronize


def child_main(spec: str) -> int:
    o = json.loads(spec)
    import importlib
    t0 = time.perf_counter()
    gpu = o["device"] in ("cuda", "sm90")
    for mod in ("kiln", "torch", "triton", "kiln.backends.triton") if gpu else ("kiln",):
        importlib.import_module(mod)     # imports are not compile time: paid before the clock starts
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    if o["device"] == "cuda":            # so is creating the CUDA context (first allocation): reported apart
        import torch
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    t_cuda = time.perf_counter() - t0
    fn = child_primitive if o["workload"] == "primitive" else \
        child_sm90 if o["device"] == "sm90" else {"pair": child_pair, "train": child_train}[o["workload"]]
    if o.get("cprofile"):
        import cProfile
        import io
        import pstats
        prof = cProfile.Profile()
        res = prof.runcall(fn, o)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(60)
        with open(o["cprofile"], "w") as f:
            f.write(text.getvalue())
        prof.dump_stats(o["cprofile"] + ".prof")   # the whole profile, for pstats elsewhere
    else:
        res = fn(o)
    res["import_s"], res["cuda_init_s"] = t_import, t_cuda
    print("RESULT " + json.dumps(res, default=str))
    return 0


# ---- the parent ------------------------------------------------------------------------------------

_PYCACHE: str | None = None


def bytecode_prefix() -> str:
    """A folder with the bytecode of kiln and Triton (what a child imports while it is timed),
    compiled once before any measurement, as `pip install` leaves installed packages: a child that
    compiled their sources on import would time the interpreter, not kiln (0.25 s of a warm pair on
    the lent GPU machine, which writes no bytecode). Children read and write bytecode there
    (PYTHONPYCACHEPREFIX), so read-only package folders do not matter."""
    global _PYCACHE
    if _PYCACHE is None:
        import triton
        _PYCACHE = tempfile.mkdtemp(prefix="kiln-compile-time-pycache-")
        atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", os.path.join(ROOT, "kiln"),
                        os.path.dirname(triton.__file__)], env=dict(env, PYTHONPYCACHEPREFIX=_PYCACHE),
                       capture_output=True, check=False)
    return _PYCACHE


def run_child(o: dict, caches: str | None, threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONPYCACHEPREFIX=bytecode_prefix())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if caches is not None:
        env["KILN_CACHE_DIR"] = os.path.join(caches, "kiln")
        env["TRITON_CACHE_DIR"] = os.path.join(caches, "triton")
    if threads is not None:
        env["KILN_COMPILE_THREADS"] = str(threads)
    if not o.get("workers", True):
        env["KILN_COMPILE_WORKERS"] = "0"
    if o["device"] == "sm90":
        env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(o)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {o} failed:\n{out.stderr[-4000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def scenarios_of(o: dict, names: list[str], threads: int | None, cprofile: str | None = None) -> dict[str, dict]:
    """One fresh cache directory; cold, then warm (as cold left it), then plans (Triton's cache emptied).
    With `cprofile` (a folder), each child's compile runs under cProfile and writes its top functions there."""
    root = tempfile.mkdtemp(prefix="kiln-compile-time-")

    def child(scenario):
        if cprofile is None:
            return run_child(o, root, threads)
        os.makedirs(cprofile, exist_ok=True)
        name = f"{o['workload']}-{o['device']}-{scenario}-threads{threads or 'default'}.txt"
        return run_child({**o, "cprofile": os.path.join(cprofile, name)}, root, threads)

    try:
        res = {"cold": child("cold")}
        if "warm" in names:
            res["warm"] = child("warm")
        if "plans" in names:
            shutil.rmtree(os.path.join(root, "triton"), ignore_errors=True)
            res["plans"] = child("plans")
        return {k: v for k, v in res.items() if k in names}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main_workloads(args) -> int:
    o = dict(device=args.device, tiny=args.tiny, prompt=args.prompt, new=args.new, workers=not args.no_workers)
    names = args.scenarios.split(",")
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    report = []
    for workload in args.workload.split(","):
        for th in threads:
            reps = [scenarios_of({**o, "workload": workload}, names, th, args.cprofile) for _ in range(args.repeat)]
            report.append({"workload": workload, "threads": th, "runs": reps})
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    goal = {"pair": (2.0, 0.3), "train": (5.0, 0.3)}
    size = "tiny" if args.tiny else "SmolLM2-135M"
    print(f"compile time on {args.device}, {size}, median of {args.repeat} fresh process(es) per scenario "
          f"(pair: prompt {args.prompt}, {args.new} new tokens)")
    print(f"  {'workload':<8} {'threads':>7} {'scenario':<8} {'cuda init':>10} {'plan+bind':>10} {'first run':>10}"
          f" {'compile':>9} {'goal':>6}  plans / kernels")
    for r in report:
        for sc in names:
            runs = [rep[sc] for rep in r["runs"]]
            med = lambda k: statistics.median(x[k] for x in runs)
            g = goal.get(r["workload"], (None, None))[0 if sc == "cold" else 1] if sc != "plans" else None
            last = runs[-1]
            plans = "/".join(x["plan_cache"] for x in last["graphs"])
            kern = ", ".join(_kernels_line(x) for x in last["graphs"] if x.get("precompile"))
            th = "default" if r["threads"] is None else str(r["threads"])
            print(f"  {r['workload']:<8} {th:>7} {sc:<8} {med('cuda_init_s'):>9.2f}s {med('plan_bind_s'):>9.2f}s "
                  f"{med('first_run_s'):>9.2f}s "
                  f"{med('compile_s'):>8.2f}s {'' if g is None else f'<={g:g}s':>6}  {plans}; {kern}")
    return 0


def _kernels_line(graph: dict) -> str:
    """How one graph's kernels compiled: in-process precompile, or background workers (and waiting)."""
    p, w = graph["precompile"], graph.get("compile_workers")
    line = f"{p.get('mode', '-')} {p.get('launches', 0)} launches {p.get('seconds', 0):.2f}s"
    if w:
        line += (f" [{w['workers']} workers, {w['distinct']} kernels, fork {w['fork_seconds']:.2f}s, "
                 f"waited {w['waited_seconds']:.2f}s" + (f", {w['failed']} failed" if w["failed"] else "") + (f", {w['errors'][:1]}" if w.get("errors") else "")
                 + (f", {w['killed']} killed" if w["killed"] else "") + "]")
    if p.get("loaded"):
        line += f" + {p['loaded']} loaded {p.get('load_seconds', 0):.2f}s"
    return line + (f" ERROR {p['error']}" if p.get("error") else "")


def main_primitive(args) -> int:
    runs = [run_child(dict(workload="primitive", device="cpu", seq=args.seq), None, None) for _ in range(args.repeat)]
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    last = runs[-1]
    med = lambda key: statistics.median(r[key] for r in runs)
    print(f"30-layer Llama (SmolLM2-135M dims), seq {args.seq}, {args.repeat} fresh processes (median); "
          f"plan cache: {', '.join(r['plan_cache'] for r in runs)}")
    print(f"  import kiln        {med('import_kiln') * 1e3:8.1f} ms")
    print(f"  build graph        {med('build_graph') * 1e3:8.1f} ms")
    print(f"  compile            {med('compile') * 1e3:8.1f} ms   <- (target < 2000 ms cold)")
    for stage in last["stages"]:
        v = statistics.median(r["stages"].get(stage, 0.0) for r in runs)
        print(f"    {stage:<16} {v * 1e3:8.1f} ms")
    print(f"  nodes {last['nodes_before']} -> {last['nodes_after']}, e-graph {last['egraph_enodes']} e-nodes"
          f"{' (optimizer FELL BACK)' if last['fell_back'] else ''}")
    print(f"  fusions: {last['fusions']}")
    print(f"  kernels: {last['kernels']} + {last['views']} views")
    print(f"  peak memory: {last['peak_planned'] / 2**20:.2f} MiB planned vs "
          f"{last['peak_unplanned'] / 2**20:.2f} MiB for all intermediates")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workload", default="primitive", help="primitive, or a comma list of pair, train")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "sm90"))
    p.add_argument("--scenarios", default="cold,warm", help="comma list of cold, warm, plans")
    p.add_argument("--threads", default="", help="comma list of KILN_COMPILE_THREADS values to compare")
    p.add_argument("--no-workers", action="store_true",
                   help="compile in-process only (KILN_COMPILE_WORKERS=0: no background compile processes)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide Llama (smoke runs on the CPU)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--seq", type=int, default=16, help="primitive: sequence length of the graph's input")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cprofile", default=None,
                   help="a folder: each child's compile under cProfile, top functions there (.txt) and all (.prof)")
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.workload == "primitive":
        args.repeat = args.repeat or 3
        return main_primitive(args)
    args.repeat = args.repeat or 1
    return main_workloads(args)


if __name__ == "__main__":
    sys.exit(main())
