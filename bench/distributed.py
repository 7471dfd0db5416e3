"""Multi-GPU benchmark (NCCL): data-parallel training throughput and tensor-parallel decode latency.

Run under torchrun on a machine with N GPUs, once per world size, e.g.

    torchrun --nproc-per-node 1 bench/distributed.py --json dp1.json
    torchrun --nproc-per-node 2 bench/distributed.py --json dp2.json

- data parallel: bench/train.py's step (SmolLM2-135M shape, 8 x 512 tokens per GPU, AdamW,
  bf16 compute with fp32 masters) as `TrainStep(world=N)`, whose gradients are averaged by
  bucketed all_reduces inside the compiled step; reports ms/step and tokens/s over all GPUs
  (scaling efficiency = tokens/s at N / (N x tokens/s at 1)).
- tensor parallel: the 1B Llama shape (bench/llm.py's config, random weights) loaded with
  `kiln.load(..., tensor_parallel=N)`; greedy decode ms/token at batch 1 (prompt 128, 128 new).
Rank 0 prints and writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch
    import torch.distributed as dist
    import transformers

    import kiln
    import kiln.distributed
    import llm
    import train
    from kiln.models.llama import llama_params, read_llama_config
    from kiln.io.safetensors_file import load_checkpoint_dir
    from kiln.io.weight_map import WeightMap
    from kiln.train import AdamW, TrainStep

    rank, world = kiln.distributed.init("cuda")
    res = {"world": world, "device": torch.cuda.get_device_name()}

    def shared_checkpoint(cfg) -> Path:   # rank 0 writes the random weights, the others wait
        path = [tempfile.mkdtemp(prefix="kiln-dist-") if rank == 0 else None]
        dist.broadcast_object_list(path)
        if rank == 0:
            torch.manual_seed(0)
            transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path[0])
        dist.barrier()
        return Path(path[0])

    targs = argparse.Namespace(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152,
                               seq=512, batch=8, precision="mixed")
    ckpt = shared_checkpoint(train.hf_config(targs))
    cfg, _, filename = read_llama_config(ckpt)
    params = llama_params(WeightMap(load_checkpoint_dir(ckpt, filename=filename), source=str(ckpt)), cfg, "float32")
    step = TrainStep(train.kiln_loss_graph(cfg, targs.batch, targs.seq, "mixed"), AdamW(lr=1e-4), device="cuda",
                     world=world)
    step.init(params)
    ids = np.random.default_rng(rank).integers(0, targs.vocab, (targs.batch, targs.seq))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "position_ids": np.broadcast_to(np.arange(targs.seq), ids.shape).copy(),
             "labels": np.ascontiguousarray(ids[:, 1:])}
    for _ in range(3):
        step(feeds, lr=1e-4)
    ms = train.median(train.step_ms(torch, lambda: step(feeds, lr=1e-4), args.steps))
    res["dp_ms_per_step"] = ms
    res["dp_tokens_per_s"] = world * targs.batch * targs.seq / (ms / 1e3)

    lm_ckpt = shared_checkpoint(transformers.LlamaConfig(**llm.CONFIGS["1b"], initializer_range=0.02))
    model = kiln.load(str(lm_ckpt), device="cuda", dtype="bfloat16", tensor_parallel=world)
    prompt = np.random.default_rng(0).integers(0, 128256, (1, 128))
    model.warmup(1, 128, 128, select="greedy")
    times = {}
    for n in (65, 128):
        model.generate(prompt, max_new_tokens=n, eos_token_id=[])
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, eos_token_id=[])
        torch.cuda.synchronize()
        times[n] = (time.perf_counter() - t) * 1e3
    res["tp_decode_ms_per_token"] = (times[128] - times[65]) / (128 - 65)
    if rank == 0:
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
