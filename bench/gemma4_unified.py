"""Gemma 4 unified, image + prompt -> first token: kiln (device="cuda") vs HF transformers eager vs
torch.compile, bfloat16, random weights, each peer in its own subprocess on the same inputs.

The model is built from a config alone (no download): transformers' Gemma4UnifiedConfig defaults (its
docs name google/gemma-4-12B-it), with the text stack's layers optionally cut (--layers) to fit the
time. It is saved once with `save_pretrained`; every peer loads that directory. The input is one image
of `--soft-tokens` merged patches (random pixels, as the processor lays them out) inside a prompt of
`--text` text tokens. Measured per peer: the median ms of the first token (vision embedder + prefill +
argmax of the last position), after warm-up; kiln and HF's first tokens are compared as a sanity check.

    python bench/gemma4_unified.py [--layers 8] [--soft-tokens 280] [--text 32] [--peers kiln,eager,compile]
    python bench/gemma4_unified.py --smoke        # tiny config on the CPU backend, to check the script
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kiln

TINY = dict(text_config=dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
                             sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
            vision_config=dict(patch_size=2, pooling_kernel_size=2, mm_embed_dim=32, mm_posemb_size=64,
                               output_proj_dims=32),
            audio_config=dict(audio_embed_dim=20), image_token_id=290, audio_token_id=291, boi_token_id=292,
            eoi_token_id=293, boa_token_id=294, eoa_token_index=295, video_token_id=296)


def build(directory: Path, layers: int | None, smoke: bool) -> dict:
    import torch
    import transformers

    cfg = transformers.Gemma4UnifiedConfig(**TINY) if smoke else transformers.Gemma4UnifiedConfig(
        vision_config={}, audio_config={})
    if layers and not smoke:
        text = cfg.text_config.to_dict()
        text["num_hidden_layers"] = layers
        text["layer_types"] = cfg.text_config.layer_types[:layers - 1] + ["full_attention"]
        text.pop("per_layer_config", None)
        cfg = transformers.Gemma4UnifiedConfig(text_config=text, vision_config=cfg.vision_config.to_dict(),
                                               audio_config=cfg.audio_config.to_dict())
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32 if smoke else torch.bfloat16)   # build in bfloat16: half the memory
    hf = transformers.Gemma4UnifiedForConditionalGeneration(cfg)
    torch.set_default_dtype(torch.float32)
    hf.save_pretrained(directory)
    return cfg.to_dict()


def inputs(cfg: dict, soft_tokens: int, text: int):
    import numpy as np

    v = cfg["vision_config"]
    side = v["patch_size"] * v["pooling_kernel_size"]
    rng = np.random.default_rng(0)
    cols = int(soft_tokens ** 0.5)
    rows = soft_tokens // cols
    n = rows * cols
    px = rng.random((1, soft_tokens, side * side * 3), dtype=np.float32)
    pos = np.full((1, soft_tokens, 2), -1, np.int64)
    pos[0, :n] = np.stack(np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy"), -1).reshape(-1, 2)
    px[0, n:] = 0
    vocab = cfg["text_config"]["vocab_size"]
    words = rng.integers(3, min(vocab, cfg["image_token_id"]) - 1, text).tolist()
    ids = [2, cfg["boi_token_id"]] + [cfg["image_token_id"]] * n + [cfg["eoi_token_id"]] + words
    ids = np.array([ids], np.int64)
    types = (ids == cfg["image_token_id"]).astype(np.int64)
    return dict(input_ids=ids, pixel_values=px, image_position_ids=pos, mm_token_type_ids=types)


def peer(name: str, ckpt: Path, feeds: dict, reps: int, smoke: bool) -> dict:
    """One peer: load, warm up, time `reps` first tokens. Runs in its own process."""
    import torch

    device = "cpu" if smoke else "cuda"
    sync = (lambda: None) if smoke else torch.cuda.synchronize
    t0 = time.perf_counter()
    if name == "kiln":
        import kiln

        model = kiln.load(str(ckpt), device=device, dtype="float32" if smoke else "bfloat16")

        def first():
            return int(model.generate(**feeds, max_new_tokens=1, eos_token_id=[])[0, -1])
    else:
        import transformers

        hf = transformers.Gemma4UnifiedForConditionalGeneration.from_pretrained(
            ckpt, dtype=torch.float32 if smoke else torch.bfloat16).to(device).eval()
        pt = {k: torch.tensor(v, device=device) for k, v in feeds.items()}
        pt["pixel_values"] = pt["pixel_values"].to(hf.dtype)
        forward = torch.compile(hf) if name == "compile" else hf

        def first():
            with torch.no_grad():
                return int(forward(**pt, logits_to_keep=1).logits[0, -1].argmax())
    token = first()
    sync()
    warm_s = time.perf_counter() - t0
    for _ in range(2):
        first()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        first()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return {"peer": name, "first_token": token, "ms": median(times), "load_and_warmup_s": warm_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=None, help="cut the text stack to this many layers")
    ap.add_argument("--soft-tokens", type=int, default=280, help="merged patches of the image (default 280)")
    ap.add_argument("--text", type=int, default=32, help="text tokens after the image (default 32)")
    ap.add_argument("--peers", default="kiln,eager,compile")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU, to check the script runs")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)       # internal: run one peer
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        ckpt = Path(args.ckpt)
        cfg = json.loads((ckpt / "config.json").read_text())
        res = peer(args.peer, ckpt, inputs(cfg, args.soft_tokens, args.text), args.reps, args.smoke)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.smoke:
        args.soft_tokens = min(args.soft_tokens, 16)
    ckpt = Path(tempfile.mkdtemp(prefix="kiln-gemma4u-"))
    t0 = time.perf_counter()
    build(ckpt, args.layers, args.smoke)
    print(f"built and saved the random model in {time.perf_counter() - t0:.0f}s: {ckpt}", flush=True)
    results = []
    for name in args.peers.split(","):
        cmd = [sys.executable, __file__, "--peer", name, "--ckpt", str(ckpt), "--soft-tokens", str(args.soft_tokens),
               "--text", str(args.text), "--reps", str(args.reps)] + (["--smoke"] if args.smoke else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(line[-1][7:]))
    base = next((r["ms"] for r in results if r["peer"] == "eager"), None)
    print(f"\nimage ({args.soft_tokens} soft tokens) + {args.text} text tokens -> first token, "
          f"{'float32 CPU (smoke)' if args.smoke else 'bfloat16 CUDA'}")
    print(f"{'peer':10} {'ms':>10} {'vs eager':>9} {'warm-up s':>10} {'token':>8}")
    for r in results:
        ratio = f"{base / r['ms']:.2f}x" if base else "-"
        print(f"{r['peer']:10} {r['ms']:10.2f} {ratio:>9} {r['load_and_warmup_s']:10.1f} {r['first_token']:8d}")
    tokens = {r["first_token"] for r in results}
    print("first tokens agree" if len(tokens) <= 1 else f"first tokens differ: {sorted(tokens)} (bfloat16 noise?)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
