"""The training step: forward, backward, gradient clipping and the optimizer update compiled
as one graph, with the state it advances (parameters, optimizer state, step count).

The trainable parameters and the optimizer state are states of the compiled step
(`Graph.state`): they live where the backend lives (on the GPU for device="cuda") and are
updated in place; a step sends its batch and returns only the loss, the metrics and the
gradient norm. `params` / `opt_state` / `state_dict()` copy them to the host when asked.

With gradient accumulation the step is two compiled graphs: one computes gradients of a
micro-batch, the other (clipping + update) applies their mean; those keep the state on the host.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from kiln.runtime.compiler import compile as compile_graph
from kiln.autodiff import grad, grad_name
from kiln.compile import cache as plan_cache
from kiln.compile.gc_pause import gc_paused
from kiln.ir import Graph, GraphError, TensorType, Value

from .data_parallel import average_gradients, mean_over_ranks
from .optimizers import Optimizer

LR, STEP, GRAD_NORM = "lr", "step", "grad_norm"


def state_name(slot: str, param: str) -> str:
    """The name of optimizer state `slot` of parameter `param` (a graph parameter of the step)."""
    return f"{slot}/{param}"


def new_name(name: str) -> str:
    """The step graph's output holding the updated value of parameter or state `name`."""
    return f"new/{name}"


def add_update(g: Graph, params: dict[str, Value], grads: dict[str, Value], optimizer: Optimizer,
               clip_norm: float | None) -> None:
    """Append clipping and the optimizer update to g; outputs grad_norm and new/<name> for every
    parameter and state entry."""
    lr = g.input(LR, (), "float64")
    step = g.input(STEP, (), "float64")
    norm = g.sqrt(g.sum_squares(list(grads.values())))
    g.output(GRAD_NORM, norm)
    if clip_norm is not None:  # torch.nn.utils.clip_grad_norm_: scale by min(1, max / (norm + 1e-6))
        coef = g.minimum(g.div(g.scalar(float(clip_norm), "float64"), g.add(norm, g.scalar(1e-6, "float64"))),
                         g.scalar(1.0, "float64"))
        grads = {n: g.mul(d, coef if d.dtype.name == "float64" else g.cast(coef, dtype=d.dtype.name))
                 for n, d in grads.items()}
    for name, p in params.items():
        state = {slot: g.parameter(state_name(slot, name), p.shape, p.dtype) for slot in optimizer.slots}
        upd = optimizer.update(g, p, grads[name], state, lr, step)
        g.output(new_name(name), upd.param)
        for slot, v in upd.state.items():
            g.output(new_name(state_name(slot, name)), v)


def _trainable(graph: Graph, trainable) -> list[str]:
    if trainable is None:
        names = [n for n, v in graph.parameters.items() if v.dtype.is_float]
    else:
        names = list(trainable)
        for n in names:
            if n not in graph.parameters:
                raise GraphError(f"trainable parameter {n!r} is not a parameter of the graph; "
                                 f"expected some of {sorted(graph.parameters)}")
    if not names:
        raise GraphError("the graph has no float parameters to train")
    return names


def build_step_graph(graph: Graph, optimizer: Optimizer, *, loss: str = "loss", trainable=None,
                     clip_norm: float | None = None, metrics: Sequence[str] = (), world: int = 1) -> Graph:
    """One graph: graph's forward, gradients of `loss`, clipping and the optimizer update.

    With `world` > 1 (data parallel) the gradients, the loss and the metrics are averaged over
    the ranks before clipping (kiln.train.data_parallel)."""
    names = _trainable(graph, trainable)
    g = grad(graph, names, loss)
    grads = average_gradients(g, {n: g.outputs[grad_name(n)] for n in names}, world)
    keep = {k: mean_over_ranks(g, g.outputs[k], world) for k in (loss, *metrics)}
    g.outputs = dict(keep)
    add_update(g, {n: g.parameters[n] for n in names}, grads, optimizer, clip_norm)
    g.name = f"{graph.name}_train_step"
    return g


def build_apply_graph(param_types: Mapping[str, "TensorType"], optimizer: Optimizer,
                      clip_norm: float | None = None) -> Graph:
    """Clipping and update alone; gradients are inputs grad/<name> (for gradient accumulation)."""
    g = Graph("apply_update")
    params = {n: g.parameter(n, t.shape, t.dtype) for n, t in param_types.items()}
    grads = {n: g.input(grad_name(n), t.shape, t.dtype) for n, t in param_types.items()}
    add_update(g, params, grads, optimizer, clip_norm)
    return g


def _updates_as_states(g: Graph, names: list[str]) -> None:
    """Make parameters `names` (and their `new/<name>` outputs) states of the step graph."""
    for node in g.nodes:
        if node.op == "parameter" and node.name in names:
            node.op = "input"
    for name in names:
        g.outputs[name] = g.outputs.pop(new_name(name))


def _recipe(graph: Graph, optimizer: Optimizer, *options) -> tuple | None:
    """The step's graphs as a compile-cache recipe: the loss graph's key, the optimizer's
    description and the options; None when one has no stable description."""
    try:
        return ("TrainStep", plan_cache.graph_key(graph), plan_cache.digest(optimizer), options)
    except plan_cache.Uncacheable:
        return None


def _param_array(value, t: TensorType, copy: bool) -> np.ndarray:
    """`value` as an array of parameter type `t`'s dtype: a copy when asked or when converted."""
    a = np.asarray(value)
    if a.dtype != t.dtype.np_dtype:
        return a.astype(t.dtype.np_dtype)
    return a.copy() if copy else a


class TrainStep:
    """A compiled training step and the state it advances.

    `step(batch, lr)` runs one optimizer step: `batch` maps graph input names to arrays, or,
    with accumulation=k, is a list of k such micro-batches whose gradients are averaged.
    Returns the step's scalars (loss and metrics averaged over micro-batches, grad_norm).
    """

    def __init__(self, graph: Graph, optimizer: Optimizer, *, loss: str = "loss", trainable=None,
                 clip_norm: float | None = None, accumulation: int = 1, metrics: Sequence[str] = (),
                 device: str = "cpu", world: int = 1):
        if not isinstance(accumulation, int) or accumulation < 1:
            raise ValueError(f"accumulation must be a positive int, got {accumulation!r}")
        if not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be a positive int (data-parallel ranks), got {world!r}")
        if world > 1 and accumulation > 1:
            raise NotImplementedError("gradient accumulation with data parallelism (world > 1)")
        self.world = world
        if clip_norm is not None and clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        for m in metrics:
            if m not in graph.outputs:
                raise GraphError(f"metric {m!r} is not an output of the graph; expected some of {sorted(graph.outputs)}")
        self.graph, self.optimizer, self.loss = graph, optimizer, loss
        self.accumulation, self.metrics = accumulation, tuple(metrics)
        self.trainable = _trainable(graph, trainable)
        self.param_types = {n: v.type for n, v in graph.parameters.items()}
        self.state_names = [state_name(s, n) for n in self.trainable for s in optimizer.slots]
        # what builds the step's graphs, for the compile cache: a warm process neither differentiates
        # nor hashes the step graph (kiln/compile/cache.py, recipes)
        recipe = _recipe(graph, optimizer, loss, self.trainable, clip_norm, self.metrics, world)
        if accumulation == 1:
            def build() -> Graph:
                with gc_paused():   # differentiating allocates objects by the million (kiln/compile/gc_pause.py)
                    g = build_step_graph(graph, optimizer, loss=loss, trainable=self.trainable, clip_norm=clip_norm,
                                         metrics=metrics, world=world)
                    _updates_as_states(g, self.trainable + self.state_names)
                return g
            self._fused = compile_graph(build, device=device, recipe=recipe and ("step", *recipe))
        else:
            def build() -> Graph:
                g = grad(graph, self.trainable, loss)
                g.outputs = {k: v for k, v in g.outputs.items()
                             if k == loss or k in metrics or k.startswith("grad/")}
                return g
            self._grads = compile_graph(build, device=device, recipe=recipe and ("gradients", *recipe))
            self._apply = compile_graph(build_apply_graph({n: self.param_types[n] for n in self.trainable},
                                                         optimizer, clip_norm), device=device)
        self._params: dict[str, np.ndarray] = {}     # the host copy (accumulation) or the frozen parameters
        self._opt_state: dict[str, np.ndarray] = {}
        self._ready = False
        self.step_count = 0

    # ---- state ------------------------------------------------------------------------
    def init(self, params: Mapping[str, np.ndarray]) -> None:
        """Start from these parameters with zero optimizer state at step 0."""
        missing = sorted(set(self.param_types) - set(params))
        extra = sorted(set(params) - set(self.param_types))
        if missing or extra:
            raise ValueError(f"init: parameters missing {missing}, unexpected {extra}")
        # a copy of what this step keeps on the host; a trained parameter of a fused step is copied
        # into its state by `_set` (no host copy first)
        on_host = self.accumulation != 1
        arrays = {n: _param_array(params[n], t, copy=on_host or n not in self.trainable)
                  for n, t in self.param_types.items()}
        for n, t in self.param_types.items():
            if arrays[n].shape != t.shape:
                raise ValueError(f"init: parameter {n!r} has shape {arrays[n].shape}, expected {t.shape}")
        self._set(arrays, None)
        self.step_count = 0

    def _set(self, params: Mapping[str, np.ndarray], opt_state: Mapping[str, np.ndarray] | None) -> None:
        """Bind parameters and optimizer state (None: zeros)."""
        if self.accumulation == 1:
            self._params = {n: a for n, a in params.items() if n not in self.trainable}
            self._fused.load_params(self._params)
            for name, a in {**{n: params[n] for n in self.trainable}, **(opt_state or {})}.items():
                self._fused.set_state(name, a)
            if opt_state is None:   # zeros where the state lives, not uploaded from the host
                self._fused.zero_states(self.state_names)
        else:
            if opt_state is None:
                opt_state = {s: np.zeros(self.param_types[n].shape, self.param_types[n].dtype.np_dtype)
                             for n in self.trainable for s in (state_name(x, n) for x in self.optimizer.slots)}
            self._params, self._opt_state = dict(params), dict(opt_state)
        self._ready = True

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter, as host arrays (trained ones copied from where the step runs)."""
        if self.accumulation != 1:
            return self._params
        return {n: self._fused.get_state(n) if n in self.trainable else self._params[n] for n in self.param_types}

    @property
    def opt_state(self) -> dict[str, np.ndarray]:
        if self.accumulation != 1:
            return self._opt_state
        return {s: self._fused.get_state(s) for s in self.state_names} if self._ready else {}

    def state_dict(self) -> dict:
        return {"params": dict(self.params), "opt_state": dict(self.opt_state), "step": self.step_count}

    def load_state_dict(self, state: Mapping) -> None:
        self.init(state["params"])
        want = set(self.state_names)
        got = set(state["opt_state"])
        if want != got:
            raise ValueError(f"optimizer state names differ: missing {sorted(want - got)}, unexpected {sorted(got - want)}")
        self._set(self.params, {k: np.array(v, copy=True) for k, v in state["opt_state"].items()})
        self.step_count = int(state["step"])

    # ---- running --------------------------------------------------------------------------
    def __call__(self, batch, lr: float) -> dict[str, float]:
        if not self._ready:
            raise RuntimeError("TrainStep: call init(params) (or load_state_dict) before stepping")
        micro = [batch] if isinstance(batch, Mapping) else list(batch)
        if len(micro) != self.accumulation:
            raise ValueError(f"expected {self.accumulation} micro-batch(es), got {len(micro)}")
        scalars = {"lr": np.float64(lr), "step": np.float64(self.step_count + 1)}
        if self.accumulation == 1:   # parameters and optimizer state are updated where the step runs
            out = self._fused.run(**micro[0], **scalars)
            self.step_count += 1
            return {k: float(out[k]) for k in (self.loss, *self.metrics, GRAD_NORM)}
        else:
            self._grads.load_params(self.params)
            sums: dict[str, np.ndarray] = {}
            for mb in micro:
                res = self._grads.run(**mb)
                for k, v in res.items():
                    sums[k] = v if k not in sums else sums[k] + v
            k = self.accumulation
            grads = {n: (sums[grad_name(n)] / k).astype(sums[grad_name(n)].dtype) for n in self.trainable}
            self._apply.load_params({**{n: self.params[n] for n in self.trainable}, **self.opt_state})
            out = self._apply.run(**{grad_name(n): v for n, v in grads.items()}, **scalars)
            report = {m: float(sums[m]) / k for m in (self.loss, *self.metrics)}
            report[GRAD_NORM] = float(out[GRAD_NORM])
        for n in self.trainable:
            self._params[n] = out[new_name(n)]
        for s in self._opt_state:
            self._opt_state[s] = out[new_name(s)]
        self.step_count += 1
        return report
