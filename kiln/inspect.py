"""`kiln inspect`: what compiling a graph does to it.

Node count before and after optimization, every fusion applied with its count, the
rewrite rules that fired, kernels per archetype, peak memory with and without the arena
plan, and the time each compile stage took. `inspect_graph` is the API; `inspect_main`
is the command line (`kiln inspect TARGET [--no-optimize] [--json]`), where TARGET is a graph
saved with `kiln.save_graph` or a checkpoint (its representative graphs are inspected).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `kiln --help` builds this parser without importing the IR
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


def model_graphs(model) -> list[Graph]:
    """Representative graphs of a loaded model (what `kiln.load` returns), by family."""
    graphs = getattr(model, "graphs", None)
    if graphs is not None and hasattr(graphs, "prefill_graph"):  # causal LMs
        return [graphs.prefill_graph(1, 16, last_only=False), graphs.decode_graph(1, 64)]
    from kiln.models.bert import BertModel, build_bert_graph
    from kiln.models.whisper import WhisperModel, build_decoder_graph, build_encoder_graph
    if isinstance(model, BertModel):
        return [build_bert_graph(model.config, 1, 16, model.dtype, with_pooler=model.has_pooler)]
    if isinstance(model, WhisperModel):
        return [build_encoder_graph(model.config, 1, model.dtype),
                build_decoder_graph(model.config, 1, 1, 4, 64, model.dtype)]
    raise TypeError(f"kiln inspect does not know the graphs of a {type(model).__name__}")


def target_graphs(target: str, dtype: str = "float32") -> list[Graph]:
    """The graphs behind a saved graph (.json) or a checkpoint directory / cached model id."""
    from kiln.ir import load_graph

    if target.endswith(".json"):
        return [load_graph(target)]
    import kiln
    return model_graphs(kiln.load(target, device="cpu", dtype=dtype))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="kiln inspect", description=__doc__.splitlines()[0])
    p.add_argument("target", help="a graph saved with kiln.save_graph (.json), a checkpoint dir or model id")
    p.add_argument("--device", default="cpu", help="cost model to optimize for (cpu or cuda)")
    add_options(p)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    """The inspect options beyond target and device (for a CLI that defines those itself)."""
    p.add_argument("--dtype", default="float32", help="dtype to load a checkpoint in")
    p.add_argument("--no-optimize", action="store_true", help="plan the graph as written")
    p.add_argument("--exclude-rule", action="append", default=[], metavar="NAME",
                   help="disable one rewrite rule (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def inspect_main(args: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Entry point for `kiln inspect` (an argv list, or a Namespace with at least `target`); exit code."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    try:
        graphs = target_graphs(args.target, getattr(args, "dtype", "float32"))
    except (OSError, ValueError, TypeError) as e:
        print(f"kiln inspect: cannot read {args.target!r}: {e}", file=sys.stderr)
        return 2
    reports = []
    for graph in graphs:
        report = inspect_graph(graph, optimize=not getattr(args, "no_optimize", False),
                               device=getattr(args, "device", "cpu"),
                               exclude_rules=getattr(args, "exclude_rule", None) or ())
        reports.append((graph.name, report))
    if getattr(args, "json", False):
        data = {name: report_dict(r) for name, r in reports}
        print(json.dumps(data if len(data) > 1 else next(iter(data.values())), indent=2, default=str))
    else:
        print("\n\n".join(format_report(r, name) for name, r in reports))
    return 0


if __name__ == "__main__":
    sys.exit(inspect_main())
