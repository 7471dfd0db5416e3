"""Vision-language time to first token on one GPU: SmolVLM2-500M's configuration (SigLIP 512 px /
patch 16 / 768 wide / 12 layers, pixel shuffle by 4, a 960-wide 32-layer Llama decoder with 15/5
heads), random weights, bfloat16. kiln (device="cuda", Triton) vs HF transformers eager vs
torch.compile, each peer in its own subprocess on the same checkpoint and the same inputs.

Measured: image(s) + prompt -> the first generated token id on the host, i.e. the vision tower on
every tile, the connector, the prompt's prefill and the argmax. kiln runs its public API
(`model.generate(..., max_new_tokens=1)`); HF runs the model's forward with logits_to_keep=1 and
an argmax (cheaper than its `generate`). Settings: 1 tile (a small image: 64 image tokens) and 13
tiles (a 4x3 split plus the global image: 832 image tokens), 32 text tokens around them.
Also reported: each peer's first call (kiln: graph build + compile + CUDA-graph capture, cold caches;
torch.compile: compilation), and the first token of each peer, which must agree.

    python bench/vlm.py [--tiles 1,13] [--peers kiln,eager,compile] [--reps 20] [--json out.json]
    python bench/vlm.py --smoke      # tiny config on the CPU: checks the script, times nothing useful
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

IMAGE_TOKEN = 49190
SMOLVLM2_500M = dict(
    model_type="smolvlm", scale_factor=4, image_token_id=IMAGE_TOKEN, tie_word_embeddings=False,
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=512, patch_size=16, num_channels=3, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6),
    text_config=dict(model_type="llama", vocab_size=49280, hidden_size=960, intermediate_size=2560,
                     num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                     rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                     tie_word_embeddings=False))
SMOKE = dict(
    model_type="smolvlm", scale_factor=2, image_token_id=100, tie_word_embeddings=False,
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
    text_config=dict(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048))
TEXT_TOKENS = 32


def log(*a):
    print(*a, flush=True, file=sys.stderr)


# ---- the parent: checkpoint, one subprocess per peer, the table ---------------------------------------

def make_checkpoint(cfg: dict, directory: Path, dtype: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.SmolVLMConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    model = transformers.SmolVLMForConditionalGeneration(config).to(getattr(torch, dtype)).eval()
    model.save_pretrained(directory)


def make_inputs(cfg: dict, tiles: int, path: Path) -> None:
    """input_ids with each tile's run of image tokens between text, pixel_values [1, tiles, 3, S, S]."""
    import numpy as np

    rng = np.random.default_rng(tiles)
    v = cfg["vision_config"]
    per_tile = (v["image_size"] // v["patch_size"]) ** 2 // cfg["scale_factor"] ** 2
    ids = list(rng.integers(10, 90, size=TEXT_TOKENS // 2))
    for _ in range(tiles):
        ids += [11, *[cfg["image_token_id"]] * per_tile]
    ids += list(rng.integers(10, 90, size=TEXT_TOKENS // 2))
    px = rng.standard_normal((1, tiles, 3, v["image_size"], v["image_size"])).astype(np.float32)
    np.savez(path, input_ids=np.array([ids], np.int64), pixel_values=px)


def run_peer(peer: str, ckpt: Path, inputs: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", peer, "--ckpt", str(ckpt), "--inputs", str(inputs),
           "--reps", str(args.reps), "--dtype", args.dtype] + (["--smoke"] if args.smoke else [])
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run(cmd + ["--out", out.name], text=True, stderr=subprocess.PIPE, timeout=3600)
        if proc.returncode != 0:
            log(proc.stderr[-3000:])
            return {"error": f"exit {proc.returncode}"}
        return json.loads(Path(out.name).read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", default="1,13")
    ap.add_argument("--peers", default="kiln,eager,compile")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU (kiln cpu, HF eager)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    cfg = SMOKE if args.smoke else SMOLVLM2_500M
    if args.smoke:
        args.dtype, args.reps = "float32", min(args.reps, 3)
    tiles = [int(t) for t in args.tiles.split(",")]
    peers = args.peers.split(",")
    root = Path(tempfile.mkdtemp(prefix="kiln-vlm-bench-"))
    ckpt = root / "smolvlm2-500m-random"
    log(f"building a random {'smoke' if args.smoke else 'SmolVLM2-500M'} checkpoint in {ckpt}")
    make_checkpoint(cfg, ckpt, args.dtype)
    results = []
    for t in tiles:
        inputs = root / f"inputs_{t}.npz"
        make_inputs(cfg, t, inputs)
        row = {"tiles": t}
        for peer in peers:
            log(f"tiles {t}: {peer} ...")
            row[peer] = run_peer(peer, ckpt, inputs, args)
        results.append(row)
    print_table(results, peers, args.dtype)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def print_table(results, peers, dtype) -> None:
    print(f"\nimage + prompt -> first token, {dtype}, median ms (first call in parentheses)")
    head = f"{'tiles':>5} {'prompt':>6} " + " ".join(f"{p:>20}" for p in peers)
    if "kiln" in peers:
        head += " " + " ".join(f"{'kiln/' + p:>14}" for p in peers if p != "kiln")
    print(head)
    for row in results:
        prompt = next((row[p].get("prompt_tokens") for p in peers if "prompt_tokens" in row[p]), "?")
        cells = []
        for p in peers:
            r = row[p]
            cells.append(f"{'failed':>20}" if "error" in r else f"{r['ms']:>10.2f} ({r['first_ms']:>7.0f})")
        line = f"{row['tiles']:>5} {prompt:>6} " + " ".join(cells)
        if "kiln" in peers and "ms" in row["kiln"]:
            line += " " + " ".join(f"{row['kiln']['ms'] / row[p]['ms']:>14.2f}" if "ms" in row[p] else f"{'-':>14}"
                                   for p in peers if p != "kiln")
        print(line)
        tokens = {p: row[p].get("token") for p in peers if "token" in row[p]}
        if len(set(tokens.values())) > 1:
            print(f"      first tokens differ: {tokens} (bf16 rounding can flip a random model's argmax)")


# ---- one peer in its own process -------------------------------------------------------------------

def worker(args) -> int:
    import numpy as np
    import torch

    data = np.load(args.inputs)
    ids, px = data["input_ids"], data["pixel_values"]
    device = "cpu" if args.smoke else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if args.worker == "kiln":
        os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-bench-triton-"))
        os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-bench-kiln-"))
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import kiln

        model = kiln.load(args.ckpt, device=device, dtype=args.dtype)
        mask = np.ones_like(ids)

        def first_token():
            return int(model.generate(ids, mask, pixel_values=px, max_new_tokens=1)[0, -1])
    else:
        import transformers

        dt = getattr(torch, args.dtype)
        hf = transformers.SmolVLMForConditionalGeneration.from_pretrained(args.ckpt, dtype=dt).to(device).eval()
        t_ids = torch.from_numpy(ids).to(device)
        t_px = torch.from_numpy(px).to(device, dt)
        forward = hf.forward
        if args.worker == "compile":
            forward = torch.compile(hf.forward)

        @torch.no_grad()
        def first_token():
            logits = forward(input_ids=t_ids, pixel_values=t_px, logits_to_keep=1).logits
            return int(logits[0, -1].argmax().item())

    t0 = time.perf_counter()
    token = first_token()
    sync()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(2):
        first_token()
    times = []
    for _ in range(args.reps):
        sync()
        t = time.perf_counter()
        first_token()        # ends with the token id on the host
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    Path(args.out).write_text(json.dumps({"ms": times[len(times) // 2], "min_ms": times[0], "first_ms": first_ms,
                                          "token": token, "prompt_tokens": int(ids.shape[1])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
