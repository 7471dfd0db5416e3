"""Launches of the GPU graphs of a compile_time.py workload, counted without a GPU: each graph is
planned for cuda and lowered as the Triton backend lowers it on an H100/H200 (132 SMs), nothing
compiled or run.

For the launch-count goal of a training step (`train`: bench/train.py's graph, SmolLM2-135M, batch
8 x 512, bfloat16 compute, float32 masters, AdamW) and for the prefill + decode `pair`; prints each
graph's launches by archetype, its most frequent launch labels and its Plan's arena bytes.

    python bench/launch_count.py [--workload train|pair] [--top 20]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile_time import cuda_graphs  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="train", choices=("train", "pair"))
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    from kiln.api import reference_evaluate
    from kiln.backends.triton.lowering import lower
    from kiln.compile import compile_graph

    for graph in cuda_graphs(args.workload, tiny=False):
        plan, _ = compile_graph(graph, device="cuda", evaluate=reference_evaluate)
        launches = lower(plan, num_sms=132, device_type="cuda").launches
        print(f"{graph.name}: {len(launches)} launches {dict(Counter(l.archetype for l in launches))}, "
              f"arena {sum(plan.memory.arenas.values()) / 2**30:.2f} GiB")
        for (arch, label), n in Counter((l.archetype, l.label) for l in launches).most_common(args.top):
            print(f"  {n:5d}  {arch:10s} {label[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
