"""The compile pipeline: verify -> optimize -> plan (schedule, kernels, memory, precision), timed by stage.

Results are kept in the persistent compile cache (`cache.py`), so compiling a graph that this or
another process compiled before only hashes the graph and reads the entry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kiln.ir import Graph

from . import cache as plan_cache
from .gc_pause import gc_paused
from .kernels import kernel_counts
from .plan import Plan, build_plan


@dataclass
class CompileReport:
    """What compilation did, for `kiln inspect` and benchmarks."""
    nodes_before: int = 0
    nodes_after: int = 0
    fusions: dict = field(default_factory=dict)
    rule_matches: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)          # archetype -> kernel count
    steps: int = 0
    views: int = 0                                       # steps that alias their input (no launch)
    load_steps: int = 0
    inplace_steps: int = 0
    peak_bytes_planned: int = 0                           # all arenas together
    peak_bytes_unplanned: int = 0                         # one buffer per intermediate
    arena_bytes: dict = field(default_factory=dict)       # dtype -> bytes
    stage_seconds: dict = field(default_factory=dict)
    optimized: bool = False
    optimizer_fell_back: bool = False
    optimizer_reason: str | None = None
    egraph_enodes: int = 0
    # the compile cache: "off", "uncacheable", "miss" (compiled, and stored unless the optimizer fell
    # back) or "hit" (read from disk; stage_seconds are then the lookup's, cold_stage_seconds the
    # stages of the compile that filled the entry)
    cache: str = "off"
    cache_key: str | None = None
    cold_stage_seconds: dict = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


def compile_graph(graph, *, device: str = "cpu", optimize: bool = True, evaluate=None,
                  rules: Sequence[str] | None = None, exclude_rules: Sequence[str] = (),
                  limits=None, cache: bool | None = None, recipe=None) -> tuple[Plan, CompileReport]:
    """Optimize (unless optimize=False) and plan `graph`; `evaluate` enables constant folding.

    `cache`: use the persistent compile cache (default: on unless KILN_COMPILE_CACHE=0).
    `recipe`: a description of what builds `graph` (`cache.recipe_key`); `graph` may then be a
    function that builds it, called only when no plan is stored under the recipe."""
    with gc_paused():
        return _cached_compile(graph, device, optimize, evaluate, rules, exclude_rules, limits, cache, recipe)


def recipe_stored(recipe, *, device: str, optimize: bool = True, evaluate=None) -> bool:
    """Whether the compile cache holds the plan of the graph `recipe` builds (default options)."""
    if recipe is None or not plan_cache.enabled():
        return False
    try:
        rkey = plan_cache.recipe_key(recipe, device=device, optimize=optimize, evaluate=evaluate, rules=None,
                                     exclude_rules=(), limits=None)
    except plan_cache.Uncacheable:
        return False
    return plan_cache.recipe_target(rkey) is not None


def _cached_compile(graph, device, optimize, evaluate, rules, exclude_rules, limits, cache, recipe):
    if not plan_cache.enabled(cache):
        plan, report = _compile(_built(graph), device, optimize, evaluate, rules, exclude_rules, limits)
        report.cold_stage_seconds = dict(report.stage_seconds)
        return plan, report
    t = time.perf_counter()
    rkey = key = None   # rkey: the recipe's key when it names no stored plan yet (recorded below)
    if recipe is not None:
        try:
            rkey = plan_cache.recipe_key(recipe, device=device, optimize=optimize, evaluate=evaluate, rules=rules,
                                         exclude_rules=exclude_rules, limits=limits)
            key = plan_cache.recipe_target(rkey)
        except plan_cache.Uncacheable:
            pass
        if key is not None:
            rkey = None
    if key is None:
        graph = _built(graph)
        try:
            key = plan_cache.compile_key(graph, device=device, optimize=optimize, evaluate=evaluate, rules=rules,
                                         exclude_rules=exclude_rules, limits=limits)
        except plan_cache.Uncacheable:
            key = None
    t_key = time.perf_counter() - t
    if key is not None:
        t = time.perf_counter()
        hit = plan_cache.load(key)
        if hit is not None:
            plan, report = hit
            report.cache = "hit"
            report.stage_seconds = {"cache_key": t_key, "cache_load": time.perf_counter() - t}
            if rkey is not None:
                plan_cache.store_recipe(rkey, key)
            return plan, report
    graph = _built(graph)
    plan, report = _compile(graph, device, optimize, evaluate, rules, exclude_rules, limits)
    report.stage_seconds["cache_key"] = t_key
    report.cache, report.cache_key = ("miss", key) if key is not None else ("uncacheable", None)
    report.cold_stage_seconds = dict(report.stage_seconds)
    if key is not None and not report.optimizer_fell_back:   # a fallback may be a time limit: not stored
        t = time.perf_counter()
        if plan_cache.store(key, plan, report) and rkey is not None:
            plan_cache.store_recipe(rkey, key)
        report.stage_seconds["cache_store"] = time.perf_counter() - t
    return plan, report


def _built(graph) -> Graph:
    return graph if isinstance(graph, Graph) else graph()


def _compile(graph, device, optimize, evaluate, rules, exclude_rules, limits) -> tuple[Plan, CompileReport]:
    report = CompileReport(nodes_before=len(graph.compute_nodes()))
    stages = report.stage_seconds
    t = time.perf_counter()
    graph.verify()
    stages["verify"] = time.perf_counter() - t
    if optimize:
        from kiln.opt import optimize as run_optimizer
        graph, opt = run_optimizer(graph, device=device, evaluate=evaluate, rules=rules,
                                   exclude_rules=exclude_rules, limits=limits)
        stages.update(opt.stage_seconds)
        report.fusions, report.rule_matches = opt.fusions, opt.rule_matches
        report.optimized = not opt.fell_back
        report.optimizer_fell_back, report.optimizer_reason = opt.fell_back, opt.reason
        report.egraph_enodes = opt.egraph_enodes
    t = time.perf_counter()
    plan = build_plan(graph)
    stages["plan"] = time.perf_counter() - t
    report.nodes_after = len(graph.compute_nodes())
    report.kernels = kernel_counts(plan.kernels)
    report.steps, report.load_steps = len(plan.steps), len(plan.load_steps)
    report.inplace_steps = sum(s.inplace for s in plan.steps)
    report.views = sum(s.kind == "view" for s in plan.steps)
    report.peak_bytes_planned = plan.memory.planned_bytes
    report.peak_bytes_unplanned = plan.memory.unplanned_bytes
    report.arena_bytes = dict(plan.memory.arenas)
    return plan, report
