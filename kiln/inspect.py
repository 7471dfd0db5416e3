"""`kiln inspect`: what compiling a graph does to it.

Node count before and after optimization, every fusion applied with its count, the
rewrite rules that fired, kernels per archetype, peak memory with and without the arena
plan, and the time each compile stage took, cold (optimizer and planner) and warm (the plan read back
from the persistent compile cache, as a second process would). `inspect_graph` is the API; `inspect_main`
is the command line (`kiln inspect TARGET [--no-optimize] [--json]`), where TARGET is a graph
saved with `kiln.save_graph` or a checkpoint (its representative graphs are inspected).

`--dispatch` (`dispatch_report`) says instead which backend kernel runs each op: on cuda, per
launch of the Triton backend, a kernel kiln generates, a library call (cuBLAS through torch)
or a fallback (a torch op on the GPU, or the NumPy reference kernel on the host); on cpu, per
Plan kernel, the NumPy `out=` kernel of each op or the reference kernel plus a copy. Nothing
runs and no GPU is needed: the report comes from the same lowering and binding the backends do.
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
                  rules: Sequence[str] | None = None, exclude_rules: Sequence[str] = (), cache: bool | None = None):
    """Compile `graph` (without binding a backend) and return its CompileReport (`report.cache` says
    whether the plan came from the compile cache)."""
    from kiln.api import reference_evaluate
    from kiln.compile import compile_graph

    _, report = compile_graph(graph, device=device, optimize=optimize, evaluate=reference_evaluate,
                              rules=rules, exclude_rules=exclude_rules, cache=cache)
    return report


def report_dict(report, warm=None) -> dict:
    d = asdict(report)
    d["total_seconds"] = report.total_seconds
    d["cold_seconds"] = sum(report.cold_stage_seconds.values())
    if warm is not None:
        d["warm_seconds"] = warm.total_seconds if warm.cache == "hit" else None
    return d


def format_compile_time(r, warm=None) -> str:
    """The compile-time lines: cold (optimize + plan, by stage) and warm (read from the compile cache)."""
    def stages(d):
        return ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in d.items())
    cold = r.cold_stage_seconds or r.stage_seconds
    if r.cache == "hit":
        lines = [f"compile time: {r.total_seconds * 1e3:.1f} ms warm (plan from the compile cache: "
                 f"{stages(r.stage_seconds)})",
                 f"  cold, when the entry was made: {sum(cold.values()) * 1e3:.1f} ms ({stages(cold)})"]
    else:
        lines = [f"compile time: {r.total_seconds * 1e3:.1f} ms cold ({stages(r.stage_seconds)}; "
                 f"compile cache: {r.cache})"]
    if warm is not None and warm.cache == "hit" and r.cache != "hit":
        lines.append(f"  warm, a second compile read from the compile cache: {warm.total_seconds * 1e3:.1f} ms "
                     f"({stages(warm.stage_seconds)})")
    return "\n".join(lines)


def format_report(report, name: str = "graph", warm=None) -> str:
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
    lines.append(format_compile_time(r, warm))
    return "\n".join(lines)


# ---- dispatch: which backend kernel runs each op ------------------------------------------------

# Triton-backend launch classes that are not kernels kiln generates
_LAUNCH_KINDS = {"CublasMatmul": "library", "TorchLaunch": "fallback", "HostLaunch": "fallback"}
_LAUNCH_NOTES = {"CublasMatmul": "cuBLAS via torch", "TorchLaunch": "torch op on the GPU",
                 "HostLaunch": "NumPy reference kernel on the host"}


def dispatch_report(graph: Graph, *, device: str = "cpu", optimize: bool = True,
                    exclude_rules: Sequence[str] = ()) -> dict:
    """{"device", "launches": [{"launch", "ops", "kind", "kernel", "label"}], "kinds": {kind: count}} for
    `graph` compiled for `device`; kind is "generated" / "library" / "fallback" (cuda) or "numpy" /
    "fallback" (cpu)."""
    from kiln.api import reference_evaluate
    from kiln.compile import compile_graph

    plan, _ = compile_graph(graph, device=device, optimize=optimize, evaluate=reference_evaluate,
                            exclude_rules=exclude_rules)
    rows = _triton_dispatch(plan) if device == "cuda" else _numpy_dispatch(plan)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return {"graph": graph.name, "device": device, "launches": rows, "kinds": kinds}


def _triton_dispatch(plan) -> list[dict]:
    from kiln.extras import require

    require("torch", "kiln inspect --dispatch --device cuda")
    require("triton", "kiln inspect --dispatch --device cuda")
    from kiln.backends.triton.lowering import lower

    rows = []
    for i, launch in enumerate(lower(plan, device_type="cuda").launches):
        cls = type(launch.fn).__name__
        rows.append({"launch": i, "ops": [plan.steps[j].op for j in launch.steps], "kind": _LAUNCH_KINDS.get(cls, "generated"),
                     "kernel": f"{cls} ({_LAUNCH_NOTES[cls]})" if cls in _LAUNCH_NOTES else f"Triton {cls}",
                     "label": launch.label})
    return rows


def _numpy_dispatch(plan) -> list[dict]:
    import numpy as np

    from kiln.backends.numpy.executor import NumpyExecutor

    ex = NumpyExecutor(plan)
    ex._bind({vid: np.zeros(t.shape, t.dtype.np_dtype) for vid, t in plan.params.values()})
    rows = []
    for i, k in enumerate(plan.kernels):
        impls = [ex.step_kernels.get(j, "reference") for j in k.steps]
        ops = [plan.steps[j].op for j in k.steps]
        slow = [op for op, x in zip(ops, impls) if x != "out="]
        rows.append({"launch": i, "ops": ops, "impls": impls, "kind": "fallback" if slow else "numpy",
                     "kernel": f"reference kernel + copy: {', '.join(slow)}" if slow else "NumPy out= kernel",
                     "label": "+".join(ops)})
    return rows


def format_dispatch(d: dict) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(d["kinds"].items()))
    unit = "launches" if d["device"] == "cuda" else "kernels"
    lines = [f"graph: {d['graph']}", f"dispatch on {d['device']}: {len(d['launches'])} {unit} ({kinds})",
             f"  {'#':>4}  {'kind':<9}  {'kernel':<40}  ops"]
    for r in d["launches"]:
        lines.append(f"  {r['launch']:>4}  {r['kind']:<9}  {r['kernel']:<40}  {'+'.join(r['ops']) or r['label']}")
    falls: dict[str, int] = {}
    for r in d["launches"]:
        if r["kind"] == "fallback":
            falls[r["label"]] = falls.get(r["label"], 0) + 1
    lines.append("fallbacks: " + (", ".join(f"{k} x{n}" for k, n in sorted(falls.items())) or "none"))
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
    p.add_argument("--dispatch", action="store_true",
                   help="per op, the backend kernel that runs it: generated, library (cuBLAS) or fallback")


def inspect_main(args: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Entry point for `kiln inspect` (an argv list, or a Namespace with at least `target`); exit code."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    try:
        graphs = target_graphs(args.target, getattr(args, "dtype", "float32"))
    except (OSError, ValueError, TypeError) as e:
        print(f"kiln inspect: cannot read {args.target!r}: {e}", file=sys.stderr)
        return 2
    if getattr(args, "dispatch", False):
        tables = [dispatch_report(g, device=getattr(args, "device", "cpu"),
                                  optimize=not getattr(args, "no_optimize", False),
                                  exclude_rules=getattr(args, "exclude_rule", None) or ()) for g in graphs]
        if getattr(args, "json", False):
            print(json.dumps(tables if len(tables) > 1 else tables[0], indent=2))
        else:
            print("\n\n".join(format_dispatch(t) for t in tables))
        return 0
    reports = []
    for graph in graphs:
        opts = dict(optimize=not getattr(args, "no_optimize", False), device=getattr(args, "device", "cpu"),
                    exclude_rules=getattr(args, "exclude_rule", None) or ())
        report = inspect_graph(graph, **opts)
        warm = inspect_graph(graph, **opts) if report.cache == "miss" else None   # as a second process would
        reports.append((graph.name, report, warm))
    if getattr(args, "json", False):
        data = {name: report_dict(r, warm) for name, r, warm in reports}
        print(json.dumps(data if len(data) > 1 else next(iter(data.values())), indent=2, default=str))
    else:
        print("\n\n".join(format_report(r, name, warm) for name, r, warm in reports))
    return 0


if __name__ == "__main__":
    sys.exit(inspect_main())
