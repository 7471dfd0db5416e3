"""Launches of a GPU graph, counted without a GPU: the graph is planned for cuda and lowered as the
Triton backend lowers it on an H100/H200 (132 SMs), nothing compiled or run.

For the launch-count goal of a training step (bench/train.py's graph: SmolLM2-135M, batch 8 x 512,
bfloat16 compute, float32 masters, AdamW) and for the decode pair; prints the launches by archetype,
the most frequent launch labels and the Plan's arena bytes.

    python bench/launch_count.py [--workload train|decode] [--top 20]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def graph_of(workload: str):
    from compile_time import _config
    cfg = _config(False)
    if workload == "decode":
        from kiln.models.llama import LlamaGraphs
        from kiln.runtime.language_model import _feed_itself, _select_greedy
        g = LlamaGraphs(cfg, "bfloat16").decode_graph(1, 256)
        _select_greedy(g)
        _feed_itself(g, (), None)
        return g
    import train as T

    from kiln.train import AdamW
    from kiln.train.step import _updates_as_states, build_step_graph, state_name
    loss = T.kiln_loss_graph(cfg, 8, 512, "mixed")
    opt = AdamW(lr=T.LR, betas=T.BETAS, eps=T.EPS, weight_decay=T.WD)
    names = [n for n, v in loss.parameters.items() if v.dtype.is_float]
    step = build_step_graph(loss, opt, trainable=names)
    _updates_as_states(step, names + [state_name(s, n) for n in names for s in opt.slots])
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="train", choices=("train", "decode"))
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    from kiln.api import reference_evaluate
    from kiln.backends.triton.lowering import lower
    from kiln.compile import compile_graph

    plan, _ = compile_graph(graph_of(args.workload), device="cuda", evaluate=reference_evaluate)
    launches = lower(plan, num_sms=132, device_type="cuda").launches
    print(f"{args.workload}: {len(launches)} launches {dict(Counter(l.archetype for l in launches))}, "
          f"arena {sum(plan.memory.arenas.values()) / 2**30:.2f} GiB")
    for (arch, label), n in Counter((l.archetype, l.label) for l in launches).most_common(args.top):
        print(f"  {n:5d}  {arch:10s} {label[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
