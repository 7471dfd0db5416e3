"""`kiln inspect`: what compiling a graph does to it.

Node count before and after optimization, every fusion applied with its count, the
rewrite rules that fired, kernels per archetype, peak memory with and without the arena
plan, and the time each compile stage took. `inspect_graph` is the API; `inspect_main`
is the command line (`kiln inspect graph.json [--no-optimize] [--json]`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence

from kiln.ir import Graph


def inspect_graph(graph: Graph, *, optimize: bool = True, device: str = "cpu",
                  rules: Sequence[str] | None = None, exclude_rules: Sequence[str] = ()):
    """Compile `graph` (without binding a backend) and return its CompileReport."""
    from kiln.api import reference_evaluate
    from kiln.compile import compile_graph

    _, report = compile_graph(graph, device=device, optimize=optimize, evaluate=reference_evaluate,
                              rules=rules, exclude_rules=exclude_rules)
    return report


def report_dict(report) -> dict:
    d = asdict(report)
    d["total_seconds"] = report.total_seconds
    return d


def format_report(report, name: str = "graph") -> str:
    r = report
    lines = [f"graph: {name}"]
    how = "optimized" if r.optimized else ("optimizer fell back: " + str(r.optimizer_reason)
                                           if r.optimizer_fell_back else "not optimized")
    extra = f", e-graph {r.egraph_enodes} e-nodes" if r.egraph_enodes else ""
    lines.append(f"nodes: {r.nodes_before} -> {r.nodes_after} ({how}{extra})")
    lines.append("fusions applied:" if r.fusions else "fusions applied: none")
    for k, v in sorted(r.fusions.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {k:<24} {v}")
    if r.rule_matches:
        lines.append("rewrite rules fired (matches):")
        for k, v in sorted(r.rule_matches.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {k:<24} {v}")
    kernels = ", ".join(f"{a} {n}" for a, n in r.kernels.items())
    lines.append(f"kernels: {sum(r.kernels.values())} ({kernels}); {r.views} views, "
                 f"{r.load_steps} load-time steps, {r.inplace_steps} in place")
    arenas = ", ".join(f"{dt} {_bytes(n)}" for dt, n in r.arena_bytes.items())
    lines.append(f"peak memory: {_bytes(r.peak_bytes_planned)} planned ({arenas or 'no arenas'}) vs "
                 f"{_bytes(r.peak_bytes_unplanned)} with one buffer per intermediate")
    stages = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r.stage_seconds.items())
    lines.append(f"compile time: {r.total_seconds * 1e3:.1f} ms ({stages})")
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="kiln inspect", description=__doc__.splitlines()[0])
    p.add_argument("graph", help="a graph saved with kiln.save_graph (JSON)")
    p.add_argument("--no-optimize", action="store_true", help="plan the graph as written")
    p.add_argument("--device", default="cpu", help="cost model to optimize for (cpu or cuda)")
    p.add_argument("--exclude-rule", action="append", default=[], metavar="NAME",
                   help="disable one rewrite rule (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def inspect_main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `kiln inspect`; returns the process exit code."""
    from kiln.ir import load_graph

    args = build_parser().parse_args(argv)
    try:
        graph = load_graph(args.graph)
    except (OSError, ValueError) as e:
        print(f"kiln inspect: cannot read graph {args.graph!r}: {e}", file=sys.stderr)
        return 2
    report = inspect_graph(graph, optimize=not args.no_optimize, device=args.device,
                           exclude_rules=args.exclude_rule)
    if args.json:
        print(json.dumps(report_dict(report), indent=2, default=str))
    else:
        print(format_report(report, graph.name))
    return 0


if __name__ == "__main__":
    sys.exit(inspect_main())
