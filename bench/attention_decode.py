"""The decode attention launch (kernels/attention.py, split-KV with the rope + cache-write prologue)
timed the way a decode step runs it: a CUDA graph of one launch per layer, back to back, each layer
with its own KV cache, early launch on. It varies what the kernel does (key splits, the fused
rope prologue, the padding mask) so each part's cost shows.

    python bench/attention_decode.py [--models 135m,1b] [--cache 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemv_sweep import graph_us  # noqa: E402
from timing import log  # noqa: E402

SHAPES = {"135m": (9, 3, 64, 30), "1b": (32, 8, 64, 16)}   # q heads, kv heads, head dim, layers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="135m,1b")
    ap.add_argument("--cache", default="256", help="comma list of KV-cache lengths")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch
    import triton
    from kiln.backends.triton.kernels.attention import Attention

    if not torch.cuda.is_available():
        log("bench/attention_decode.py needs a CUDA GPU")
        return 1
    bf, dev = torch.bfloat16, "cuda"
    out = {}
    log(f"{torch.cuda.get_device_name()}: decode attention, batch 1, bf16, us per launch (one launch per layer)")
    for model, sk in itertools.product(args.models.split(","), (int(c) for c in args.cache.split(","))):
        hq, hk, d, layers = SHAPES[model]
        pos = sk // 2
        caches = [(torch.randn(1, hk, sk, d, device=dev, dtype=bf), torch.randn(1, hk, sk, d, device=dev, dtype=bf))
                  for _ in range(layers)]
        q = torch.randn(1, hq, 1, d, device=dev, dtype=bf)
        xk, xv = (torch.randn(1, hk, 1, d, device=dev, dtype=bf) for _ in range(2))
        cos, sin = torch.rand(1, 1, d // 2, device=dev, dtype=bf), torch.rand(1, 1, d // 2, device=dev, dtype=bf)
        slot = torch.tensor([pos], device=dev, dtype=torch.int64)
        mask = (torch.arange(sk, device=dev) <= pos).view(1, 1, 1, sk)
        o = torch.empty(1, hq, 1, d, device=dev, dtype=bf)
        row = {}
        for splits, rope, masked in itertools.product(
                sorted({1, 2, triton.cdiv(sk, 128), triton.cdiv(sk, 64)}), (False, True), (False, True)):
            att = Attention(tuple(q.shape), (1, hk, sk, d), (1, hk, sk, d), bf, mask_kind="bool" if masked else "none",
                            force="decode", rope=(d // 2, False) if rope else None, splits=splits)
            scratch = [torch.empty(s, dtype=t, device=dev) for s, t in att.scratch()]
            calls = [lambda k=k, v=v: att(q, k, v, mask if masked else None, o, None, scratch,
                                          (xk, xv, cos, sin, slot) if rope else None) for k, v in caches]
            row[(att.splits, rope, masked)] = graph_us(torch, calls)
        log(f"  {model} cache {sk}: " + " | ".join(
            f"splits {s}{' rope' if r else ''}{' mask' if m else ''} {t:.2f}" for (s, r, m), t in row.items()))
        out[f"{model}:{sk}"] = {str(k): v for k, v in row.items()}
        caches = None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
