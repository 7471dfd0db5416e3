"""SAM 2 benchmark on one GPU: image encode + one mask, kiln (device="cuda") vs HF transformers eager vs
torch.compile, each peer in its own subprocess, the same random weights and inputs.

Models: the SAM 2.1 hiera-tiny and hiera-small configurations (1024 x 1024 input), built from the config
alone (no download), weights re-drawn once and saved with `save_pretrained`; every peer loads that
directory. Measured per peer (median of --reps runs, wall clock with the device synchronized):
- encode: pixel_values [1, 3, 1024, 1024] -> the three image embeddings (kiln: `embed_image`,
  NumPy in and out; HF: `get_image_embeddings`, tensors already on the GPU);
- mask: one foreground click against the cached embeddings, three masks + IoU scores;
- warm-up: the first encode + mask (kiln: graph build, compile, CUDA graph capture; torch.compile:
  tracing and autotuning).
- kiln-resident: kiln's `set_image` (embeddings stay on the GPU as graph state) and prompts against it,
  nothing but the prompt and the masks crossing to the host.
The IoU scores of every peer are compared with HF eager's as a sanity check.

    python bench/sam2.py [--models tiny,small] [--peers kiln,eager,compile] [--dtype float32] [--json out.json]
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

from timing import log, median

MODELS = {  # Sam2HieraDetConfig overrides of the defaults (which are hiera-tiny), from HF's conversion script
    "tiny": dict(),
    "small": dict(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
}
POINT = [[[[500.0, 375.0]]]]


def make_checkpoint(name: str, path: Path) -> None:
    import numpy as np
    import torch
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

    torch.manual_seed(0)
    cfg = Sam2Config(vision_config=Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**MODELS[name])))
    model = Sam2Model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():   # std-0.02 init leaves attention uniform; redraw so the work is representative
        for pname, p in model.named_parameters():
            n = torch.randn(p.shape, generator=gen)
            if pname.endswith("bias"):
                p.copy_(0.1 * n)
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * n)
            else:
                p.copy_(n / np.sqrt(max(1, int(np.prod(p.shape[1:])))))
    model.save_pretrained(path)


def inputs():
    import numpy as np

    px = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    return px, np.array(POINT, np.float32), np.ones((1, 1, 1), np.int64)


def timed(torch, fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return median(out)


def run_kiln(ckpt: str, dtype: str, reps: int) -> dict:
    import torch

    import kiln

    px, pts, labels = inputs()
    t0 = time.perf_counter()
    model = kiln.load(ckpt, device="cuda", dtype=dtype)
    embs = model.embed_image(px)
    out = model(image_embeddings=embs, input_points=pts, input_labels=labels)
    warm = time.perf_counter() - t0
    enc = timed(torch, lambda: model.embed_image(px), reps)
    mask = timed(torch, lambda: model(image_embeddings=embs, input_points=pts, input_labels=labels), reps)
    t0 = time.perf_counter()
    model.set_image(px)                       # embeddings kept on the GPU: the predictor-style path
    resident = model(input_points=pts, input_labels=labels)
    warm_resident = time.perf_counter() - t0
    res = dict(encode_ms=enc, mask_ms=mask, warmup_s=warm, iou=out["iou_scores"].astype("float32").ravel().tolist())
    res["resident"] = dict(encode_ms=timed(torch, lambda: model.set_image(px), reps),
                           mask_ms=timed(torch, lambda: model(input_points=pts, input_labels=labels), reps),
                           warmup_s=warm_resident, iou=resident["iou_scores"].astype("float32").ravel().tolist())
    return res


def run_hf(ckpt: str, dtype: str, reps: int, compiled: bool) -> dict:
    import torch
    from transformers import Sam2Model

    dt = getattr(torch, dtype)
    px, pts, labels = inputs()
    model = Sam2Model.from_pretrained(ckpt).to(device="cuda", dtype=dt).eval()
    px_t, pts_t, lab_t = (torch.from_numpy(a).cuda() for a in (px, pts, labels))
    px_t, pts_t = px_t.to(dt), pts_t.to(dt)
    if compiled:
        model.vision_encoder = torch.compile(model.vision_encoder)
        model.mask_decoder = torch.compile(model.mask_decoder)
        model.prompt_encoder = torch.compile(model.prompt_encoder)
    with torch.no_grad():
        t0 = time.perf_counter()
        embs = model.get_image_embeddings(px_t)
        out = model(image_embeddings=embs, input_points=pts_t, input_labels=lab_t)
        for _ in range(2 if compiled else 0):
            embs = model.get_image_embeddings(px_t)
            out = model(image_embeddings=embs, input_points=pts_t, input_labels=lab_t)
        torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        enc = timed(torch, lambda: model.get_image_embeddings(px_t), reps)
        mask = timed(torch, lambda: model(image_embeddings=embs, input_points=pts_t, input_labels=lab_t), reps)
    return dict(encode_ms=enc, mask_ms=mask, warmup_s=warm, iou=out.iou_scores.float().cpu().ravel().tolist())


def child(args) -> int:
    """One peer in this process; prints one JSON line."""
    if args.peer == "kiln":
        res = run_kiln(args.ckpt, args.dtype, args.reps)
    else:
        res = run_hf(args.ckpt, args.dtype, args.reps, compiled=args.peer == "compile")
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--peers", default="eager,kiln,compile")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)   # child mode
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        return child(args)
    import torch

    if not torch.cuda.is_available():
        log("bench/sam2.py needs a CUDA GPU")
        return 1
    import transformers

    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.dtype}")
    env = dict(os.environ)
    root = tempfile.mkdtemp(prefix="kiln-bench-sam2-")
    env.setdefault("TRITON_CACHE_DIR", os.path.join(root, "triton"))
    env.setdefault("KILN_CACHE_DIR", os.path.join(root, "kiln"))
    results = {}
    for name in args.models.split(","):
        ckpt = Path(root) / f"sam2.1-hiera-{name}"
        make_checkpoint(name, ckpt)
        res = results[name] = {}
        for peer in args.peers.split(","):
            cmd = [sys.executable, __file__, "--peer", peer, "--ckpt", str(ckpt), "--dtype", args.dtype,
                   "--reps", str(args.reps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                res[peer] = {"error": (proc.stderr or proc.stdout)[-2000:]}
                log(f"  {name} {peer}: failed\n{res[peer]['error']}")
                continue
            res[peer] = json.loads(line[len("RESULT "):])
            if "resident" in res[peer]:
                res[f"{peer}-resident"] = res[peer].pop("resident")
            for tag in (peer, f"{peer}-resident"):
                if tag in res:
                    r = res[tag]
                    log(f"  {name} {tag}: encode {r['encode_ms']:.2f} ms, mask {r['mask_ms']:.2f} ms, "
                        f"warm-up {r['warmup_s']:.1f} s")
    log(f"\n| model | peer | encode ms | mask ms | encode+mask ms | speedup vs eager | warm-up s | max IoU diff vs eager |")
    log("|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        base = res.get("eager", {})
        for peer, r in res.items():
            if "error" in r:
                log(f"| {name} | {peer} | failed | | | | | |")
                continue
            total = r["encode_ms"] + r["mask_ms"]
            ratio = (base["encode_ms"] + base["mask_ms"]) / total if "encode_ms" in base else float("nan")
            diff = (max(abs(a - b) for a, b in zip(r["iou"], base["iou"])) if "iou" in base else float("nan"))
            log(f"| {name} | {peer} | {r['encode_ms']:.2f} | {r['mask_ms']:.2f} | {total:.2f} | {ratio:.2f}x | "
                f"{r['warmup_s']:.1f} | {diff:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
