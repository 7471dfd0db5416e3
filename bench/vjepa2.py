"""V-JEPA 2 clip encode on one GPU: kiln (device="cuda") vs HF transformers eager vs torch.compile.

The model is facebook/vjepa2-vitl-fpc16-256's architecture (ViT-L: 1024 wide, 24 layers, 16 heads,
256x256 crops, 16-frame clips -> 8 x 16 x 16 = 2048 tokens), built from its config alone (no
download) with HF's random init and saved once with `save_pretrained`. One 16-frame clip
(batch 1, float32 pixels from a fixed seed) is encoded by each peer in its own subprocess, so no
peer warms another's caches or allocator:

- kiln: `kiln.load(ckpt, device="cuda", dtype=...)` then `model(pixel_values_videos=x)` on the host
  array: its public API, so the times include the pixel upload and the output copy back
  (1 x 2048 x 1024); compile time counts graph build, e-graph, Triton kernels, CUDA-graph capture.
- eager: `VJEPA2Model.from_pretrained(...)(x, skip_predictor=True)` on device tensors (sdpa).
- compile: the same module under `torch.compile` (default mode), first calls until steady state.

Each peer writes its last_hidden_state; the table reports the max |kiln - eager| relative to
max |eager|, ms (median of --reps), and kiln's ratio to each peer.

    python bench/vjepa2.py [--dtype bfloat16|float32] [--peers kiln,eager,compile] [--reps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import cuda_ms, log, median

ROOT = Path(__file__).resolve().parents[1]

# facebook/vjepa2-vitl-fpc16-256(-ssv2)'s encoder and predictor (config.json facts)
CONFIG = dict(patch_size=16, crop_size=256, frames_per_clip=16, tubelet_size=2, hidden_size=1024, in_chans=3,
              num_attention_heads=16, num_hidden_layers=24, mlp_ratio=4.0, layer_norm_eps=1e-6, qkv_bias=True,
              hidden_act="gelu", pred_hidden_size=384, pred_num_attention_heads=12, pred_num_hidden_layers=12,
              pred_num_mask_tokens=10, pred_mlp_ratio=4.0, num_pooler_layers=3)
FRAMES = 16


def make_checkpoint(directory: Path) -> None:
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.VJEPA2Model(transformers.VJEPA2Config(**CONFIG)).eval()
    model.save_pretrained(directory)
    x = np.random.RandomState(0).randn(1, FRAMES, 3, CONFIG["crop_size"], CONFIG["crop_size"]).astype(np.float32)
    np.save(directory / "pixels.npy", x)


def peer_kiln(ckpt: Path, dtype: str, reps: int, out: Path) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    import kiln

    x = np.load(ckpt / "pixels.npy")
    t = time.perf_counter()
    model = kiln.load(ckpt, device="cuda", dtype=dtype)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    y = model(pixel_values_videos=x)["last_hidden_state"]
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t
    for _ in range(3):
        model(pixel_values_videos=x)
    ms = cuda_ms(torch, lambda: model(pixel_values_videos=x), reps)
    np.save(out, np.asarray(y, dtype=np.float32))
    return {"load_s": load_s, "compile_s": first_s, "ms": median(ms), "ms_min": min(ms)}


def peer_hf(ckpt: Path, dtype: str, reps: int, out: Path, compiled: bool) -> dict:
    import numpy as np
    import torch
    import transformers

    tdt = getattr(torch, dtype)
    model = transformers.VJEPA2Model.from_pretrained(ckpt, attn_implementation="sdpa").to("cuda", tdt).eval()
    x = torch.from_numpy(np.load(ckpt / "pixels.npy")).to("cuda", tdt)

    def encode(m):
        return m(pixel_values_videos=x, skip_predictor=True).last_hidden_state

    fn = torch.compile(model) if compiled else model
    with torch.inference_mode():
        t = time.perf_counter()
        y = encode(fn)
        for _ in range(2):
            encode(fn)
        torch.cuda.synchronize()
        warm_s = time.perf_counter() - t
        for _ in range(3):
            encode(fn)
        ms = cuda_ms(torch, lambda: encode(fn), reps)
    np.save(out, y.float().cpu().numpy())
    return {"compile_s": warm_s, "ms": median(ms), "ms_min": min(ms)}


def run_peer(peer: str, ckpt: Path, dtype: str, reps: int) -> dict:
    """This script again, as `--peer NAME`, in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--peer", peer, "--ckpt", str(ckpt), "--dtype", dtype, "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--peers", default="kiln,eager,compile")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.peer:   # a child: one peer, one JSON line
        ckpt = Path(args.ckpt)
        out = ckpt / f"out_{args.peer}_{args.dtype}.npy"
        if args.peer == "kiln":
            res = peer_kiln(ckpt, args.dtype, args.reps, out)
        else:
            res = peer_hf(ckpt, args.dtype, args.reps, out, compiled=args.peer == "compile")
        print(json.dumps(res))
        return 0

    import numpy as np
    import torch
    import transformers

    if not torch.cuda.is_available():
        log("bench/vjepa2.py needs a CUDA GPU")
        return 1
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}")
    ckpt = Path(tempfile.mkdtemp(prefix="vjepa2-vitl-fpc16-256-"))
    make_checkpoint(ckpt)
    log(f"vjepa2-vitl-fpc16-256 shape, random weights, {args.dtype}, one {FRAMES}-frame clip "
        f"(2048 tokens) -> {ckpt}")
    results = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "peers": {}}
    for peer in args.peers.split(","):
        log(f"  running {peer} ...")
        results["peers"][peer] = run_peer(peer, ckpt, args.dtype, args.reps)
    outs = {p: ckpt / f"out_{p}_{args.dtype}.npy" for p in results["peers"]}
    if outs.get("kiln", Path("-")).exists() and outs.get("eager", Path("-")).exists():
        k, e = np.load(outs["kiln"]), np.load(outs["eager"])
        results["kiln_vs_eager_max_rel"] = float(np.abs(k - e).max() / np.abs(e).max())
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def print_table(results: dict) -> None:
    peers = results["peers"]
    kiln_ms = peers.get("kiln", {}).get("ms")
    log("\n| peer | encode ms (median) | min ms | first call / warm-up s | kiln / peer |")
    log("|---|---|---|---|---|")
    for name, r in peers.items():
        if "error" in r:
            log(f"| {name} | error: {r['error']} | | | |")
            continue
        ratio = f"{kiln_ms / r['ms']:.2f}x" if kiln_ms else "-"
        log(f"| {name} | {r['ms']:.2f} | {r['ms_min']:.2f} | {r['compile_s']:.1f} | {ratio} |")
    if "kiln_vs_eager_max_rel" in results:
        log(f"\nmax |kiln - eager| / max |eager| = {results['kiln_vs_eager_max_rel']:.2e} ({results['dtype']})")


if __name__ == "__main__":
    sys.exit(main())
