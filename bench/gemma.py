"""Gemma 3 decode/prefill benchmark on one GPU: kiln (Triton backend) vs HF transformers eager vs
torch.compile(mode="reduce-overhead"), bfloat16, random weights of the real configurations.

Models: gemma-3-270m and gemma-3-1b text configurations (built from the config alone, no download):
head_dim 256, one KV head, a 262k vocabulary, sliding-window (512) layers with every 6th layer
global. The random weights are saved once with `save_pretrained`; each peer then runs in its own
subprocess on that checkpoint, with the measurement loops of bench/llm.py (decode ms/step at
each batch, prefill latency, compile / warm-up time, greedy tokens compared across peers).

    python bench/gemma.py [--models 270m,1b] [--batches 1,8] [--peers eager,kiln,compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from llm import bench_hf, bench_kiln, hbm_bandwidth, print_table, roofline_ms  # noqa: E402
from timing import cold_caches, log  # noqa: E402

COMMON = dict(num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144, rms_norm_eps=1e-6,
              sliding_window=512, query_pre_attn_scalar=256, max_position_embeddings=32768,
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
CONFIGS = {
    "270m": dict(COMMON, hidden_size=640, intermediate_size=2048, num_hidden_layers=18),
    "1b": dict(COMMON, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26),
}


def worker(peer: str, ckpt: Path, out: Path, batches, prompt: int, new: int, prefill: int) -> int:
    """One peer on the saved checkpoint; writes its numbers and greedy tokens to `out`."""
    import torch
    import transformers

    res: dict = {}
    if peer == "kiln":
        tokens = bench_kiln(torch, ckpt, batches, prompt, new, prefill, res, profile=False)
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).to("cuda").eval()
        tokens = bench_hf(torch, hf, batches, prompt, new, prefill, res, compiled=peer == "compile")
    res["tokens"] = {str(b): t.tolist() for b, t in tokens.items()}
    out.write_text(json.dumps(res, default=str))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="270m,1b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--peers", default="eager,kiln,compile")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)   # PEER,CHECKPOINT,OUT (a child process)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        peer, ckpt, out = args.worker.split(",")
        return worker(peer, Path(ckpt), Path(out), batches, args.prompt, args.new, args.prefill)
    cold_caches()
    import numpy as np
    import torch
    import transformers

    if not torch.cuda.is_available():
        log("bench/gemma.py needs a CUDA GPU")
        return 1
    bw = hbm_bandwidth(torch)
    dev = torch.cuda.get_device_name()
    log(f"{dev}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"copy bandwidth {bw / 1e12:.2f} TB/s")
    results = {"device": dev, "bandwidth_Bps": bw, "models": {}}
    for name in args.models.split(","):
        cfg = CONFIGS[name]
        res = results["models"][name] = {}
        log(f"gemma-3-{name} shape, bfloat16, random weights")
        torch.manual_seed(0)
        hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **cfg, bos_token_id=None, eos_token_id=None, pad_token_id=None)).to(torch.bfloat16)
        ckpt = Path(tempfile.mkdtemp(prefix=f"gemma3-{name}-"))
        hf.save_pretrained(ckpt)
        res["params"] = sum(p.numel() for p in hf.parameters())
        del hf
        toks = {}
        for peer in args.peers.split(","):
            out = ckpt / f"{peer}.json"
            cmd = [sys.executable, __file__, "--worker", f"{peer},{ckpt},{out}", "--batches", args.batches,
                   "--prompt", str(args.prompt), "--new", str(args.new), "--prefill", str(args.prefill)]
            proc = subprocess.run(cmd, check=False)
            if proc.returncode or not out.is_file():
                res[f"{peer}_error"] = f"worker exited with {proc.returncode}"
                continue
            peer_res = json.loads(out.read_text())
            toks[peer] = {int(b): np.asarray(t) for b, t in peer_res.pop("tokens").items()}
            res.update(peer_res)
        for B in batches:
            # (bench/llm.py's roofline reads every layer's whole KV cache: an upper bound for sliding layers)
            res[f"roofline_ms_b{B}"] = roofline_ms(cfg, B, args.prompt, args.new, bw)
            for peer in ("eager", "compile"):
                if B in toks.get("kiln", {}) and B in toks.get(peer, {}):
                    res[f"kiln_vs_{peer}_same_tokens_b{B}"] = float((toks["kiln"][B] == toks[peer][B]).mean())
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print_table(results, batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
