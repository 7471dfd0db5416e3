"""Decode GEMV block shapes on one GPU, timed the way a decode step runs them: a CUDA graph of
back-to-back launches, each over its own weight (together larger than L2, so every byte comes
from HBM), so launch gaps and programmatic dependent launch count as they do in a step.

For each decode matmul of a model shape (batch 1 by default) it prints the best configurations,
kiln's default, and cuBLAS (torch.matmul, no fusion), in microseconds per launch and as a
fraction of copy bandwidth. `--stream` also times the persistent variant (all of K in one chunk)
at the given numbers of programs per SM.

    python bench/gemv_sweep.py --models 1b,135m [--rows 1] [--quick] [--stream 1,2,4,8] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import log  # noqa: E402

SHAPES = {   # hidden, intermediate, q heads, kv heads, head dim, vocab (bench/llm.py's configurations)
    "135m": (576, 1536, 9, 3, 64, 49152),
    "1b": (2048, 8192, 32, 8, 64, 128256),
}


def layer_shapes(model: str):
    h, inter, hq, hk, hd, v = SHAPES[model]
    return [("qkv+norm", (hq + 2 * hk) * hd, h, dict(norm="rms_norm")),
            ("o+res", h, hq * hd, dict(has_residual=True)),
            ("gate_up+norm+swiglu", inter, h, dict(norm="rms_norm", activation="swiglu")),
            ("down+res", h, inter, dict(has_residual=True)),
            ("head+norm", v, h, dict(norm="rms_norm"))]


def graph_us(torch, fns, reps: int = 20) -> float:
    """Microseconds per launch of `fns` captured back to back in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps / len(fns)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="1b,135m")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a small grid: BN 2-8, BK 1024/2048, 4/8 warps, early launch")
    ap.add_argument("--only", default="", help="only the layer shapes whose name contains this (e.g. head)")
    ap.add_argument("--bn", default="", help="comma list of BN values to sweep (replaces the grid's)")
    ap.add_argument("--bk", default="", help="comma list of BK values to sweep (replaces the grid's)")
    ap.add_argument("--stream", default="", help="comma list of programs per SM to sweep the persistent "
                    "(streaming) GEMV with, for layers whose K fits one chunk")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch
    from kiln.backends.triton.device import programmatic_launch
    from kiln.backends.triton.kernels.gemv import Gemv

    if not torch.cuda.is_available():
        log("bench/gemv_sweep.py needs a CUDA GPU")
        return 1
    x = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    bw_ms = graph_us(torch, [lambda: x[: 2**27].copy_(x[2**27:])], reps=10)
    bw = 2 * 2**27 / (bw_ms * 1e-6)
    x = None   # free the copy buffers
    pdl = programmatic_launch()
    log(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s, rows {args.rows}, early launch {pdl}")
    bf, M = torch.bfloat16, args.rows
    out = {"bandwidth_Bps": bw, "rows": M, "shapes": {}}
    for model in args.models.split(","):
        for name, N, K, kw in layer_shapes(model):
            if args.only not in name:
                continue
            width = 2 * N if kw.get("activation") == "swiglu" else N
            nbytes = width * K * 2
            n = max(4, min(64, -(-(256 << 20) // nbytes)))     # > L2 in all: every weight byte from HBM
            ws = [torch.randn(width, K, device="cuda", dtype=bf) * 0.05 for _ in range(n)]
            a = torch.randn(1, M, K, device="cuda", dtype=bf)
            c = torch.empty(1, M, N, device="cuda", dtype=bf)
            r = torch.randn(1, M, N, device="cuda", dtype=bf)
            nw = torch.ones(K, device="cuda", dtype=bf)

            def calls(k):
                return [lambda w=w: k(a, w.t().unsqueeze(0), c, None, r if kw.get("has_residual") else None,
                                      nw if kw.get("norm") else None, None) for w in ws]

            times = {}
            bm = 1 << max(0, (M - 1).bit_length())
            grid = ((2, 4, 8), (1024, 2048), (4, 8), (pdl,)) if args.quick else \
                ((1, 2, 4, 8, 16), (256, 512, 1024, 2048), (2, 4, 8), (False, True) if pdl else (False,))
            if args.bn or args.bk:
                grid = (tuple(int(v) for v in args.bn.split(",")) if args.bn else grid[0],
                        tuple(int(v) for v in args.bk.split(",")) if args.bk else grid[1], *grid[2:])
            for bn, bk, warps, early in itertools.product(*grid):
                if bm * bn * bk > 16384 or bk > 2 * triton_pow2(K):
                    continue
                k = Gemv(M, N, K, bf, cfg=dict(BM=bm, BN=bn, BK=bk, num_warps=warps), early_launch=early, **kw)
                try:
                    times[(bn, bk, warps, early)] = graph_us(torch, calls(k))
                except Exception as e:   # a configuration that does not compile (registers) is skipped
                    log(f"    {name} {(bn, bk, warps, early)}: {type(e).__name__}")
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            for per_sm, bn, warps in itertools.product([int(v) for v in args.stream.split(",") if v], (2, 4, 8),
                                                       (4, 8)):
                bk = triton_pow2(K)   # all of K in one chunk
                if bk > 4096 or bm * bn * bk > 16384:
                    continue
                cfg = dict(BM=bm, BN=bn, BK=bk, num_warps=warps, STREAM=per_sm * sms)
                k = Gemv(M, N, K, bf, cfg=cfg, early_launch=pdl, **kw)
                try:
                    times[("stream", per_sm, bn, warps)] = graph_us(torch, calls(k))
                except Exception as e:
                    log(f"    {name} stream {(per_sm, bn, warps)}: {type(e).__name__}")
            default = Gemv(M, N, K, bf, early_launch=pdl, **kw)
            t_default = graph_us(torch, calls(default))
            cout = torch.empty(M, width, device="cuda", dtype=bf)
            cub = graph_us(torch, [lambda w=w: torch.matmul(a[0], w.t(), out=cout) for w in ws])
            ideal = nbytes / bw * 1e6
            best = sorted(times, key=times.get)[:6]
            log(f"  {model} {name:22s} N={width:6d} K={K:5d} weight {nbytes / 2**20:6.1f} MiB, at copy bandwidth "
                f"{ideal:6.1f} us | default {default.cfg['BN'], default.cfg['BK'], default.cfg['num_warps']} "
                f"{t_default:6.1f} us ({ideal / t_default:4.0%}) | cuBLAS {cub:6.1f} us")
            for b in best:
                log(f"      config {b}: {times[b]:6.1f} us ({ideal / times[b]:4.0%})")
            out["shapes"][f"{model}:{name}"] = dict(N=width, K=K, ideal_us=ideal, default_us=t_default, cublas_us=cub,
                                                    all={str(k): v for k, v in times.items()})
            ws = None
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def triton_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


if __name__ == "__main__":
    os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "0")
    sys.exit(main())
