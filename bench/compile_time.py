"""Compile time by stage for a 30-layer Llama-shaped graph (SmolLM2-135M dimensions).

The graph is written from primitive ops (bench/llama_primitive_graph.py), so every
fusion has to be discovered. Each repetition runs in a fresh Python process, so the
numbers are cold: they include importing kiln and egglog and building the rulebook.

    python bench/compile_time.py [--repeat 3] [--seq 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import kiln
from kiln.compile import compile_graph
from kiln.api import reference_evaluate
t_import = time.perf_counter() - t0
sys.path.insert(0, {here!r})
import llama_primitive_graph as L
t = time.perf_counter()
g = L.build(L.SMOLLM2_135M, seq={seq})
t_build = time.perf_counter() - t
t = time.perf_counter()
plan, report = compile_graph(g, evaluate=reference_evaluate)
t_compile = time.perf_counter() - t
print(json.dumps(dict(import_kiln=t_import, build_graph=t_build, compile=t_compile,
                      stages=report.stage_seconds, nodes_before=report.nodes_before,
                      nodes_after=report.nodes_after, fusions=report.fusions, kernels=report.kernels,
                      views=report.views, egraph_enodes=report.egraph_enodes,
                      peak_planned=report.peak_bytes_planned, peak_unplanned=report.peak_bytes_unplanned,
                      fell_back=report.optimizer_fell_back)))
"""


def run_once(seq: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(here=HERE, seq=seq)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seq", type=int, default=16, help="sequence length of the graph's input")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    runs = [run_once(args.seq) for _ in range(args.repeat)]
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    last = runs[-1]
    med = lambda key: statistics.median(r[key] for r in runs)
    print(f"30-layer Llama (SmolLM2-135M dims), seq {args.seq}, {args.repeat} cold runs (median)")
    print(f"  import kiln        {med('import_kiln') * 1e3:8.1f} ms")
    print(f"  build graph        {med('build_graph') * 1e3:8.1f} ms")
    print(f"  compile            {med('compile') * 1e3:8.1f} ms   <- cold compile (target < 2000 ms)")
    for stage in last["stages"]:
        v = statistics.median(r["stages"][stage] for r in runs)
        print(f"    {stage:<16} {v * 1e3:8.1f} ms")
    print(f"  nodes {last['nodes_before']} -> {last['nodes_after']}, e-graph {last['egraph_enodes']} e-nodes"
          f"{' (optimizer FELL BACK)' if last['fell_back'] else ''}")
    print(f"  fusions: {last['fusions']}")
    print(f"  kernels: {last['kernels']} + {last['views']} views")
    print(f"  peak memory: {last['peak_planned'] / 2**20:.2f} MiB planned vs "
          f"{last['peak_unplanned'] / 2**20:.2f} MiB for all intermediates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
