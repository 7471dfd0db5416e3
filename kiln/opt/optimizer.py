"""The optimizer: classic passes, then equality saturation with egglog, then DAG extraction.

Bounded: saturation runs one iteration at a time and stops at a node or time limit; when
a limit is hit, or anything in translation or extraction fails, the graph comes back
as the classic passes left it, with an `OptimizationWarning` that says why.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from kiln.ir import Graph

from . import rules as rulebook
from .cost import cost_model
from .passes import Evaluator, prune, simplify


class OptimizationWarning(UserWarning):
    """The e-graph optimizer gave up and returned the unoptimized graph."""


@dataclass
class Limits:
    max_enodes: int = 200_000
    max_seconds: float = 10.0
    max_iterations: int = 40


@dataclass
class OptimizeReport:
    nodes_before: int = 0
    nodes_after: int = 0
    fusions: dict = field(default_factory=dict)       # fused feature -> how many the optimizer added
    rule_matches: dict = field(default_factory=dict)  # rule name -> matches during saturation
    stage_seconds: dict = field(default_factory=dict)
    egraph_enodes: int = 0
    iterations: int = 0
    saturated: bool = False
    dag_cost_us: float | None = None
    folded: int = 0
    merged: int = 0
    dead: int = 0
    fell_back: bool = False
    reason: str | None = None


def optimize(graph: Graph, *, device: str = "cpu", evaluate: Evaluator | None = None,
             rules: Sequence[str] | None = None, exclude_rules: Sequence[str] = (),
             limits: Limits | None = None, use_egraph: bool = True) -> tuple[Graph, OptimizeReport]:
    """Return an equivalent, cheaper graph and a report of what changed.

    `evaluate(op, arrays, attrs)` enables constant folding (the compile pipeline passes the
    NumPy reference kernels); `rules`/`exclude_rules` pick rewrite rules by name.
    """
    limits = limits or Limits()
    chosen = rulebook.select_rules(rules, exclude_rules)
    model = cost_model(device)
    report = OptimizeReport(nodes_before=_count(graph))
    clock = _Clock(report.stage_seconds)

    with clock("classic_passes"):
        simple, stats = simplify(graph, evaluate)  # rebuilds through Graph.op, which re-checks every type
    report.folded, report.merged, report.dead = stats.folded, stats.merged, stats.dead
    result = simple
    if use_egraph and simple.compute_nodes():
        try:
            result = _saturate_and_extract(simple, chosen, model, limits, report, clock)
        except _GiveUp as e:
            _fall_back(report, str(e))
        except BaseException as e:  # a bug in a rule or the translation must not break compilation
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            _fall_back(report, f"{type(e).__name__}: {e}")
    report.nodes_after = _count(result)
    report.fusions = fusion_delta(graph, result)
    return result, report


class _GiveUp(Exception):
    pass


def _fall_back(report: OptimizeReport, reason: str) -> None:
    report.fell_back, report.reason = True, reason
    warnings.warn(f"kiln.opt: {reason}; using the unoptimized graph", OptimizationWarning, stacklevel=3)


def _saturate_and_extract(graph, chosen, model, limits, report, clock) -> Graph:
    with clock("egglog_import"):
        from egglog import bindings  # lazy: importing kiln must not pay for egglog

    from .extract import CONSTRUCTORS, EGraphView, Extractor
    from .terms import SEED_PROGRAM, decode, encode

    start = time.perf_counter()
    with clock("translate"):
        enc = encode(graph)
        eg = bindings.EGraph()
        program = "\n".join([rulebook.program(chosen), SEED_PROGRAM, *rulebook.table_facts(enc.perms, enc.dtypes)])
        eg.run_program(*eg.parse_program(program))
        with tempfile.TemporaryDirectory(prefix="kiln-egraph-") as folder:
            eg.run_program(*eg.parse_program(enc.write_tables(folder) + "\n(run seed 1)"))
    with clock("saturate"):
        step = eg.parse_program("(run opt 1)")
        size_cmd = eg.parse_program("(print-size)")
        matches: Counter = Counter()
        for it in range(limits.max_iterations):
            (out,) = eg.run_program(*step)
            matches.update(out.report.num_matches_per_rule)
            report.iterations = it + 1
            (sizes,) = eg.run_program(*size_cmd)
            report.egraph_enodes = sum(n for name, n in sizes.sizes if name in CONSTRUCTORS)
            if not out.report.updated:
                report.saturated = True
                break
            if report.egraph_enodes > limits.max_enodes:
                raise _GiveUp(f"e-graph grew past {limits.max_enodes} e-nodes ({report.egraph_enodes})")
            if time.perf_counter() - start > limits.max_seconds:
                raise _GiveUp(f"saturation took longer than {limits.max_seconds} s")
        report.rule_matches = {k: v for k, v in sorted(matches.items()) if v}
    with clock("extract"):
        view = EGraphView(eg, enc)
        ex = Extractor(view, model)
        roots = {name: view.value_class[v.id] for name, v in graph.outputs.items()}
        sel, report.dag_cost_us = ex.extract(list(dict.fromkeys(roots.values())))
    with clock("rebuild"):
        out = decode(graph, enc, view.nodes, sel, roots, ex.types, view.none_class)
        prune(out)
        for name, v in graph.outputs.items():
            if out.outputs[name].type != v.type:
                raise RuntimeError(f"output {name!r} changed type from {v.type} to {out.outputs[name].type}")
    return out


def fusion_features(graph: Graph) -> Counter:
    """What fused work a graph contains: fused ops, matmul epilogues/prologues, shared matmuls."""
    c: Counter = Counter()
    for n in graph.compute_nodes():
        if n.op in FUSED_OPS:
            c[n.op] += 1
        elif n.op == "fused_linear":
            c["linear"] += 1
            a = n.attrs
            if a["activation"] != "none":
                c[f"linear+{a['activation']}"] += 1
            if n.inputs[3] is not None:
                c["linear+residual"] += 1
            if a["norm"] != "none":
                c[f"{a['norm']}+linear"] += 1
        elif n.op == "matmul" and (n.attrs["transpose_a"] or n.attrs["transpose_b"]):
            c["matmul_transpose_flag"] += 1
        if n.op in ("linear", "fused_linear") and n.inputs[1].node.op == "concat":
            c["sibling_matmuls"] += 1  # one matmul over weights concatenated from several
    return c


FUSED_OPS = ("silu", "swiglu", "geglu", "gelu", "softmax", "log_softmax", "rms_norm", "layer_norm", "linear",
             "attention")


def fusion_delta(before: Graph, after: Graph) -> dict[str, int]:
    b, a = fusion_features(before), fusion_features(after)
    return {k: a[k] - b[k] for k in sorted(a) if a[k] > b[k]}


def _count(graph: Graph) -> int:
    return len(graph.compute_nodes())


class _Clock:
    def __init__(self, sink: dict):
        self.sink = sink

    def __call__(self, name: str):
        return _Timer(self.sink, name)


class _Timer:
    def __init__(self, sink, name):
        self.sink, self.name = sink, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.sink[self.name] = self.sink.get(self.name, 0.0) + time.perf_counter() - self.t
        return False
