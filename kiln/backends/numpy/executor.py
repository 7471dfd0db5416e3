"""Runs a Plan with NumPy on the CPU, out of preallocated arena views.

The arenas (one byte buffer per dtype) and a view for every planned slot are created
once; each run writes every computed value into its slot (`out=` kernels, or the
reference kernel plus one `np.copyto`), so the results need no new buffers in steady
state. View steps (reshape, transpose, slices) alias their input. Steps that depend
only on parameters run once after `load_params`, not per call.
"""

from __future__ import annotations

import numpy as np

from kiln.compile.plan import Plan

from .kernels import KERNELS
from .out_kernels import OUT_KERNELS


class NumpyExecutor:
    def __init__(self, plan: Plan):
        missing = sorted({s.op for s in plan.steps + plan.load_steps if s.op not in KERNELS})
        if missing:
            raise NotImplementedError(f"the NumPy backend has no kernel for op(s) {missing}")
        self.plan = plan
        self.arenas = {dt: np.empty(max(n, 1), np.uint8) for dt, n in plan.memory.arenas.items()}
        self.slots: dict[int, np.ndarray] = {}
        for vid, st in plan.memory.storages.items():
            t = plan.types[vid]
            self.slots[vid] = np.ndarray(t.shape, t.dtype.np_dtype, buffer=self.arenas[st.dtype], offset=st.offset)
        self._static: dict[int, np.ndarray] = {}
        self._static_ready = False

    def params_changed(self, params: dict[int, np.ndarray]) -> None:
        self._static_ready = False

    def _load(self, params: dict[int, np.ndarray]) -> None:
        env = {**self.plan.constants, **params}
        for step in self.plan.load_steps:
            result = KERNELS[step.op](*_args(step, env), **step.attrs)
            for vid, r in zip(step.outputs, result if isinstance(result, tuple) else (result,)):
                env[vid] = r
        self._static = {v: env[v] for s in self.plan.load_steps for v in s.outputs}
        self._static_ready = True

    def run(self, inputs: dict[int, np.ndarray], params: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._static_ready:
            self._load(params)
        env: dict[int, np.ndarray] = {**self.plan.constants, **self._static, **params}
        for vid, a in inputs.items():
            env[vid] = np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a)  # ascontiguousarray makes 0-d 1-d
        slots = self.slots
        for step in self.plan.steps:
            args = _args(step, env)
            if step.kind == "view":
                result = KERNELS[step.op](*args, **step.attrs)
                for vid, r in zip(step.outputs, result if isinstance(result, tuple) else (result,)):
                    env[vid] = r
                continue
            outs = [slots[v] for v in step.outputs]
            fast = OUT_KERNELS.get(step.op)
            if not (fast is not None and len(outs) == 1 and fast(outs[0], *args, **step.attrs)):
                result = KERNELS[step.op](*args, **step.attrs)
                for out, r in zip(outs, result if isinstance(result, tuple) else (result,)):
                    np.copyto(out, r)
            for vid, out in zip(step.outputs, outs):
                env[vid] = out
        return {name: np.array(env[vid], copy=True) for name, vid in self.plan.outputs.items()}


def _args(step, env):
    return [([env[i] for i in x] if isinstance(x, list) else (env[x] if x is not None else None))
            for x in step.inputs]
