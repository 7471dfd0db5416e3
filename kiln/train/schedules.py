"""Learning-rate schedules: pure functions of the (0-based) optimizer step, so a resumed run
gets the same rates. Formulas are HF transformers' get_*_schedule_with_warmup."""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check(name: str, lr: float, warmup: int, total: int | None = None) -> None:
    if lr < 0:
        raise ValueError(f"{name}: lr must be >= 0, got {lr}")
    if warmup < 0:
        raise ValueError(f"{name}: warmup_steps must be >= 0, got {warmup}")
    if total is not None and total <= warmup:
        raise ValueError(f"{name}: total_steps ({total}) must exceed warmup_steps ({warmup})")


@dataclass(frozen=True)
class Constant:
    lr: float

    def __call__(self, step: int) -> float:
        return self.lr


@dataclass(frozen=True)
class LinearWarmup:
    """lr * step / warmup for the first warmup steps; then constant, or, with total_steps,
    decaying linearly to 0 at total_steps."""

    lr: float
    warmup_steps: int
    total_steps: int | None = None

    def __post_init__(self):
        _check("LinearWarmup", self.lr, self.warmup_steps, self.total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * step / max(1, self.warmup_steps)
        if self.total_steps is None:
            return self.lr
        return self.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))


@dataclass(frozen=True)
class Cosine:
    """Linear warmup, then half a cosine from lr down to min_lr at total_steps."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self):
        _check("Cosine", self.lr, self.warmup_steps, self.total_steps)
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"Cosine: min_lr must be in [0, lr], got {self.min_lr}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        rate = self.min_lr / self.lr if self.lr else 0.0
        return self.lr * max(0.0, factor * (1 - rate) + rate)


def constant(lr: float) -> Constant:
    return Constant(lr)


def linear_warmup(lr: float, warmup_steps: int, total_steps: int | None = None) -> LinearWarmup:
    return LinearWarmup(lr, warmup_steps, total_steps)


def cosine(lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> Cosine:
    return Cosine(lr, total_steps, warmup_steps, min_lr)
