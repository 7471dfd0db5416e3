"""Optimizers as graph builders, fused into the compiled training step.

An optimizer names its per-parameter state slots and emits the update of one parameter as
graph ops. The learning rate and the (1-based) step count are float64 scalar inputs of the
step graph, so schedules and bias corrections change nothing but an input; scalars are
formed in float64 and rounded to the parameter's dtype once, as torch.optim does.
Formulas follow torch.optim's single-tensor implementations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir import Graph, GraphError, Value


@dataclass
class Update:
    param: Value
    state: dict[str, Value] = field(default_factory=dict)


class Optimizer:
    """Base: `slots` are the state names per parameter (all start at zero)."""

    slots: tuple[str, ...] = ()
    lr: float

    def update(self, g: Graph, param: Value, grad: Value, state: dict[str, Value], lr: Value, step: Value) -> Update:
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": type(self).__name__, **{k: v for k, v in vars(self).items()}}


def _in(g: Graph, scalar: Value, like: Value) -> Value:
    """A float64 scalar rounded to like's dtype."""
    return scalar if scalar.dtype == like.dtype else g.cast(scalar, dtype=like.dtype.name)


def _check(name: str, **values) -> None:
    for k, v in values.items():
        if v < 0:
            raise GraphError(f"{name}: {k} must be >= 0, got {v}")


class SGD(Optimizer):
    """SGD with optional momentum (dampening, Nesterov) and L2 weight decay, as torch.optim.SGD."""

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        _check("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise GraphError("SGD: nesterov needs momentum > 0 and dampening = 0")
        self.lr, self.momentum, self.dampening, self.nesterov = lr, momentum, dampening, nesterov
        self.weight_decay = weight_decay
        self.slots = ("momentum_buffer",) if momentum else ()

    def update(self, g, param, grad, state, lr, step):
        d = grad
        if self.weight_decay:
            d = d + param * self.weight_decay
        new_state = {}
        if self.momentum:
            buf = state["momentum_buffer"] * self.momentum + d * (1.0 - self.dampening)
            if self.dampening:  # torch starts the buffer at the first gradient, undamped
                buf = g.where(g.equal(step, g.scalar(1.0, step.dtype)), d, buf)
            new_state["momentum_buffer"] = buf
            d = d + buf * self.momentum if self.nesterov else buf
        return Update(param - d * _in(g, lr, param), new_state)


class Adam(Optimizer):
    """Adam with L2 weight decay (added to the gradient), as torch.optim.Adam."""

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        _check(type(self).__name__, lr=lr, eps=eps, weight_decay=weight_decay)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise GraphError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def update(self, g, param, grad, state, lr, step):
        b1, b2 = self.betas
        p, d = param, grad
        if self.weight_decay:
            if self.decoupled:
                p = p * _in(g, 1.0 - lr * self.weight_decay, p)
            else:
                d = d + p * self.weight_decay
        m = state["exp_avg"] + (d - state["exp_avg"]) * (1.0 - b1)          # torch: lerp
        v = state["exp_avg_sq"] * b2 + d * d * (1.0 - b2)
        bias1 = 1.0 - g.pow(g.scalar(b1, step.dtype), step)
        bias2_sqrt = g.sqrt(1.0 - g.pow(g.scalar(b2, step.dtype), step))
        step_size = lr / bias1
        denom = g.sqrt(v) / _in(g, bias2_sqrt, v) + self.eps
        return Update(p - m / denom * _in(g, step_size, p), {"exp_avg": m, "exp_avg_sq": v})


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * wd before the step), as torch.optim.AdamW."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(lr, betas, eps, weight_decay)
