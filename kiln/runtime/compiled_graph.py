"""A compiled graph: validated inputs and parameters in, NumPy arrays out, state kept where the backend lives.

States (`Graph.state` / `Graph.assign`) are buffers that persist across runs: a KV cache,
weights being trained, optimizer moments. They start as zeros, live in the backend's
memory (host arrays for NumPy, device tensors for Triton) and are read or written from
the host only when asked (`get_state` / `set_state`). Two compiled graphs of one backend
can share a state buffer (`state_buffer` / `bind_state`, `bind_states`), e.g. a prefill and a decode
graph writing one KV cache.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.compile.plan import Plan
from kiln.errors import InputError  # noqa: F401  (defined in kiln.errors; importable from here)
from kiln.ir import TensorType, as_dtype

from . import trace


class CompiledGraph:
    def __init__(self, plan: Plan, executor, device: str, report=None):
        self.plan, self.executor, self.device = plan, executor, device
        self.report = report  # kiln.compile.CompileReport, when compiled through kiln.compile
        self._params: dict[int, np.ndarray] = {}
        self._pool: dict = {}   # the weight pool of `share_params`

    @property
    def graph(self):
        return self.plan.graph

    @property
    def input_types(self) -> dict[str, TensorType]:
        return {k: t for k, (_, t) in self.plan.inputs.items()}

    @property
    def param_types(self) -> dict[str, TensorType]:
        return {k: t for k, (_, t) in self.plan.params.items()}

    @property
    def state_types(self) -> dict[str, TensorType]:
        return {k: t for k, (_, _, t) in self.plan.states.items()}

    # ---- state ------------------------------------------------------------------------
    def get_state(self, name: str) -> np.ndarray:
        """A host copy of state `name`."""
        self._state_type(name)
        return self.executor.get_state(name)

    def set_state(self, name: str, value) -> None:
        """Copy `value` (shape and dtype of the state, nothing cast) into state `name`."""
        self.executor.set_state(name, _checked("state", name, value, self._state_type(name)))

    def zero_states(self, names) -> None:
        """Set states `names` to zeros where they live (no host array, no copy)."""
        for name in names:
            self._state_type(name)
        for name in names:
            self.executor.zero_state(name)

    def state_buffer(self, name: str):
        """The backend's own buffer of state `name` (a NumPy array or a device tensor), not a copy."""
        self._state_type(name)
        return self.executor.state[name]

    def bind_state(self, name: str, buffer) -> None:
        """Use another compiled graph's `state_buffer(name)` as this graph's state `name` (shared)."""
        self.bind_states({name: buffer})

    def bind_states(self, buffers: Mapping[str, object]) -> None:
        """`bind_state` for each (name, buffer), rebinding the backend once rather than once per state."""
        for name, buffer in buffers.items():
            t = self._state_type(name)
            if tuple(buffer.shape) != t.shape:
                raise InputError(f"state {name!r}: buffer has shape {tuple(buffer.shape)}, expected {t.shape}")
        if buffers:
            self.executor.bind_states(dict(buffers))

    def share_states(self, pool: dict) -> None:
        """Use the buffers in `pool` (state name -> buffer) for the states it has, and add this graph's
        other states to it: every graph sharing one pool reads and writes the same cache."""
        self.bind_states({name: pool[name] for name in self.state_types if name in pool})
        for name in self.state_types:
            if name not in pool:
                pool[name] = self.state_buffer(name)

    def reorder_state(self, name: str, rows) -> None:
        """state[name] := state[name][rows] along its first axis, where the state lives (beam search)."""
        t = self._state_type(name)
        idx = np.asarray(rows)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx.size and (
                idx.min() < 0 or idx.max() >= t.shape[0])) or idx.shape[0] != t.shape[0]:
            raise InputError(f"state {name!r}: reorder needs {t.shape[0]} row indices in [0, {t.shape[0]}), "
                             f"got {idx.dtype} {idx.shape}")
        self.executor.reorder_state(name, idx.astype(np.int64))

    def _state_type(self, name: str) -> TensorType:
        if name not in self.plan.states:
            raise InputError(f"unknown state {name!r}; this graph's states are {sorted(self.plan.states)}")
        return self.plan.states[name][2]

    def load_params(self, params: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Bind parameter arrays by name; with strict, every parameter must be given and no other."""
        self._take_params(params, strict)
        if hasattr(self.executor, "params_changed"):
            self.executor.params_changed(self._params)
        for name, arr in params.items():   # a pooled buffer of this graph's now holds `arr`
            if name in self._pool:
                mine = self.executor.param_buffer(self.plan.params[name][0])
                if mine is not None and mine.data_ptr() == self._pool[name][1].data_ptr():
                    self._pool[name] = (arr, self._pool[name][1])

    def _take_params(self, params: Mapping[str, np.ndarray], require_all: bool) -> None:
        """Check `params` by name and type and keep them as this graph's host parameters."""
        _check_names("parameter", params, self.plan.params, require_all=require_all)
        for name, arr in params.items():
            vid, t = self.plan.params[name]
            self._params[vid] = _checked("parameter", name, arr, t)

    def share_params(self, pool: dict, params: Mapping[str, np.ndarray]) -> None:
        """`load_params(params)` (every parameter), except that a parameter whose very array `pool`
        (name -> (host array, device buffer), from other graphs of the same weights) holds is bound to
        that buffer, not uploaded again; this graph's other parameters are added to it. The graphs of
        one pool hold one copy of the weights."""
        bind = getattr(self.executor, "bind_params", None)
        if bind is None:   # the NumPy backend reads the host arrays themselves: nothing to share
            return self.load_params(params)
        self._take_params(params, require_all=True)
        shared = {vid: pool[name][1] for name, (vid, _) in self.plan.params.items()
                  if name in pool and pool[name][0] is params[name]}
        bind(shared)
        self._pool = pool
        self.executor.params_changed(self._params, on_device=set(shared))
        for name, (vid, _) in self.plan.params.items():
            if vid not in shared and (buf := self.executor.param_buffer(vid)) is not None:
                pool[name] = (params[name], buf)

    def run(self, **inputs) -> dict[str, np.ndarray]:
        return self.executor.run(self._bound(inputs), self._params)

    def run_async(self, **inputs):
        """Start a run; the returned handle's `wait()` gives `run`'s outputs. On the GPU the host is
        free meanwhile (to launch the next step, say); on the CPU the run is done when this returns."""
        return self.executor.run_async(self._bound(inputs), self._params)

    def _bound(self, inputs: dict) -> dict[int, np.ndarray]:
        self.executor.tracer = trace.active()   # None unless a kernel trace is being recorded
        _check_names("input", inputs, self.plan.inputs, require_all=True)
        if len(self._params) != len(self.plan.params):
            missing = [n for n, (vid, _) in self.plan.params.items() if vid not in self._params]
            raise InputError(f"parameters not loaded: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
                             f"call load_params first")
        return {self.plan.inputs[n][0]: _checked("input", n, a, self.plan.inputs[n][1]) for n, a in inputs.items()}

    __call__ = run

    def run_borrowed(self, **inputs) -> dict[str, np.ndarray]:
        """As `run`, but the outputs may be views of the executor's buffers, valid until its next run
        (saves copying large outputs); falls back to `run` on backends that always copy."""
        if not getattr(self.executor, "borrowed_outputs", False):
            return self.run(**inputs)
        return self.executor.run(self._bound(inputs), self._params, copy_outputs=False)


def _check_names(kind: str, given: Mapping, expected: Mapping, require_all: bool) -> None:
    extra = sorted(set(given) - set(expected))
    if extra:
        raise InputError(f"unexpected {kind}(s) {extra}; expected {sorted(expected)}")
    if require_all:
        missing = sorted(set(expected) - set(given))
        if missing:
            raise InputError(f"missing {kind}(s) {missing}")


def _checked(kind: str, name: str, arr, t: TensorType) -> np.ndarray:
    a = np.asarray(arr)
    if tuple(a.shape) != t.shape:
        raise InputError(f"{kind} {name!r}: expected shape {t.shape}, got {tuple(a.shape)}")
    try:
        dt = as_dtype(a.dtype)
    except TypeError:
        raise InputError(f"{kind} {name!r}: expected dtype {t.dtype}, got unsupported {a.dtype}") from None
    if dt != t.dtype:
        raise InputError(f"{kind} {name!r}: expected dtype {t.dtype}, got {dt} (cast explicitly)")
    return a
