"""Graph optimization: classic passes plus equality saturation with egglog (imported lazily)."""

from .optimizer import Limits, OptimizationWarning, OptimizeReport, fusion_features, optimize
from .passes import simplify
from .rules import RULE_NAMES

__all__ = ["RULE_NAMES", "Limits", "OptimizationWarning", "OptimizeReport", "fusion_features", "optimize",
           "simplify"]
