"""A stream of prompts of varied lengths: what shape buckets save (kiln CausalLM, kiln/runtime/buckets.py).

Each prompt is a fresh shape. A static-shape compiler without buckets compiles a graph per new
length; with buckets (prompts left-padded to 16, 32, 64, ... tokens) it compiles a handful.
Peers, each in its own subprocess, same random weights (SmolLM2-135M config, built from the
config alone, no download), same prompts, greedy generation:

- kiln: buckets on (the default), `kiln.load(..., device=DEVICE)`, `model.generate`
- kiln-exact: the same with `model.buckets = None` (one graph per shape)
- eager: HF transformers `generate`
- compile: HF `generate` with `model.forward = torch.compile(model.forward)` (dynamo recompiles
  on new shapes until it marks them dynamic)

Reported per peer: first pass over the stream (compiles included), second pass (warm), both in
seconds, the ratio to kiln, and for kiln the graphs compiled.

    python bench/prompt_stream.py [--device cuda] [--prompts 24] [--max-len 300] [--new 16]
        [--peers kiln,kiln-exact,eager,compile] [--config 135m|tiny] [--json out.json]
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

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                 rms_norm_eps=1e-5, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True,
                 max_position_embeddings=1024),
}


def prompts(n: int, max_len: int, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, (1, int(s))) for s in rng.integers(4, max_len + 1, n)]


def worker(args) -> dict:
    """One peer over the stream, twice; returns its numbers (run in a subprocess of its own)."""
    import numpy as np
    import torch

    stream = prompts(args.prompts, args.max_len, CONFIGS[args.config]["vocab_size"])
    out: dict = {"peer": args.peer}
    if args.peer.startswith("kiln"):
        import kiln

        dtype = "bfloat16" if args.device == "cuda" else "float32"
        model = kiln.load(args.checkpoint, device=args.device, dtype=dtype)
        if args.peer == "kiln-exact":
            model.buckets = None

        def run(ids):
            return model.generate(ids, max_new_tokens=args.new, eos_token_id=[])
    else:
        import transformers

        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        hf = transformers.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).to(args.device).eval()
        if args.peer == "compile":
            hf.forward = torch.compile(hf.forward)

        def run(ids):
            with torch.no_grad():
                t = torch.from_numpy(ids).to(args.device)
                return hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=args.new, do_sample=False,
                                   eos_token_id=None, pad_token_id=0).cpu().numpy()

    tokens = []
    for name in ("first_pass_s", "warm_pass_s"):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tokens = [np.asarray(run(ids))[0, ids.shape[1]:].tolist() for ids in stream]
        out[name] = time.perf_counter() - t0
    out["tokens"] = tokens
    if args.peer.startswith("kiln"):
        out["graphs_compiled"] = model.compiles
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--prompts", type=int, default=24, help="prompts in the stream")
    ap.add_argument("--max-len", type=int, default=300, help="prompt lengths are drawn from 4..max-len")
    ap.add_argument("--new", type=int, default=16, help="tokens generated per prompt")
    ap.add_argument("--peers", default="kiln,kiln-exact,eager,compile")
    ap.add_argument("--config", default="135m", choices=sorted(CONFIGS))
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)        # worker mode
    ap.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        print(json.dumps(worker(args)))
        return 0

    import torch
    import transformers

    torch.manual_seed(0)
    ckpt = Path(tempfile.mkdtemp(prefix="prompt-stream-"))
    cfg = transformers.LlamaConfig(**CONFIGS[args.config], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    transformers.LlamaForCausalLM(cfg).save_pretrained(ckpt)
    results = {"device": args.device, "config": args.config, "prompts": args.prompts, "max_len": args.max_len,
               "new": args.new, "torch": torch.__version__, "transformers": transformers.__version__, "peers": {}}
    for peer in args.peers.split(","):
        cmd = [sys.executable, __file__, "--peer", peer, "--checkpoint", str(ckpt), "--device", args.device,
               "--prompts", str(args.prompts), "--max-len", str(args.max_len), "--new", str(args.new),
               "--config", args.config]
        print(f"running {peer} ...", file=sys.stderr, flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)   # this checkout's kiln
        if res.returncode != 0:
            print(f"{peer} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        results["peers"][peer] = json.loads(res.stdout.strip().splitlines()[-1])
    peers = results["peers"]
    ref = peers.get("kiln")
    print(f"{args.prompts} prompts of 4..{args.max_len} tokens, {args.new} new tokens each, {args.config} config, "
          f"{args.device}, torch {torch.__version__}, transformers {transformers.__version__}")
    print("| peer | first pass s | warm pass s | first / kiln | warm / kiln | graphs compiled | tokens = kiln |")
    print("|---|---|---|---|---|---|---|")
    for name, r in peers.items():
        first = r["first_pass_s"] / ref["first_pass_s"] if ref else float("nan")
        warm = r["warm_pass_s"] / ref["warm_pass_s"] if ref else float("nan")
        same = "-" if not ref else ("yes" if r["tokens"] == ref["tokens"] else "no")
        print(f"| {name} | {r['first_pass_s']:.2f} | {r['warm_pass_s']:.2f} | {first:.2f} | {warm:.2f} | "
              f"{r.get('graphs_compiled', '-')} | {same} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
