"""Runs a Plan with the NumPy reference kernels on the CPU."""

from __future__ import annotations

import numpy as np

from kiln.compile.plan import Plan

from .kernels import KERNELS


class NumpyExecutor:
    def __init__(self, plan: Plan):
        missing = sorted({s.op for s in plan.steps if s.op not in KERNELS})
        if missing:
            raise NotImplementedError(f"the NumPy backend has no kernel for op(s) {missing}")
        self.plan = plan

    def run(self, inputs: dict[int, np.ndarray], params: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[int, np.ndarray] = {**self.plan.constants, **params, **inputs}
        for step in self.plan.steps:
            args = [([env[i] for i in x] if isinstance(x, list) else (env[x] if x is not None else None))
                    for x in step.inputs]
            result = KERNELS[step.op](*args, **step.attrs)
            results = result if isinstance(result, tuple) else (result,)
            for vid, r in zip(step.outputs, results):
                env[vid] = r
            for vid in step.release:
                env.pop(vid, None)
        return {name: np.array(env[vid], copy=True) for name, vid in self.plan.outputs.items()}
