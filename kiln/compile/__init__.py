"""Compile pipeline: kernel grouping, liveness + arena memory plan, precision policy, the Plan."""

from .pipeline import CompileReport, compile_graph
from .plan import Plan, Step, build_plan

__all__ = ["CompileReport", "Plan", "Step", "build_plan", "compile_graph"]
