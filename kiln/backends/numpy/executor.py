"""Runs a Plan with NumPy on the CPU, out of preallocated arena views.

The arenas (one byte buffer per dtype) and a view for every planned slot are created
once; each run writes every computed value into its slot, so the results need no new
buffers in steady state. View steps (reshape, transpose, slices) alias their input.
States are arrays that outlive a run (zeros at first); a value the plan computes into a
state's buffer is written there directly, any other assigned value is copied there at the
end of the run.

Binding happens once per set of parameters, not per run: load-time steps (those that depend
only on parameters and constants) run, every argument that does not change between runs
(slots, parameters, constants, load-time results and views of these) is resolved, and each
compute step becomes one callable that writes its slot: a specialized `out=` kernel
(out_kernels.py) where one applies, else the reference kernel plus one copy. A run then
only patches in the arguments that come from the inputs and calls the list. How many BLAS
threads a run's matmuls get is measured per executor (blas_threads.py).

With a `tracer` set (kiln.runtime.trace, set by CompiledGraph while a trace is recorded) a
run times each step and reports one span per Plan kernel; without one nothing is timed.
"""

from __future__ import annotations

from typing import Callable

import time

import numpy as np

from kiln.compile.plan import Plan
from kiln.compile.step_inputs import flat_ids

from .blas_threads import ThreadChoice
from .kernels import KERNELS
from .out_kernels import BUILDERS, StepBinding


class NumpyExecutor:
    tracer = None   # a kiln.runtime.trace.Trace while one is recorded

    def __init__(self, plan: Plan):
        missing = sorted({s.op for s in plan.steps + plan.load_steps if s.op not in KERNELS})
        if missing:
            raise NotImplementedError(f"the NumPy backend has no kernel for op(s) {missing}")
        self.plan = plan
        self.arenas = {dt: np.empty(max(n, 1), np.uint8) for dt, n in plan.memory.arenas.items()}
        self.state: dict[str, np.ndarray] = {n: np.zeros(t.shape, t.dtype.np_dtype)
                                             for n, (_, _, t) in plan.states.items()}
        self._make_slots()
        self._program: list[tuple] | None = None
        self._outputs: list[tuple[str, int, np.ndarray | None]] = []
        self._scratch: dict[tuple, np.ndarray] = {}
        self.threads = ThreadChoice()
        self.reference_steps: dict[str, int] = {}  # op -> steps run by the reference kernel plus a copy
        self.step_kernels: dict[int | None, str] = {}  # filled when binding: compute step -> "out=" / "reference"

    def _make_slots(self) -> None:
        plan = self.plan
        self.slots: dict[int, np.ndarray] = {}
        for vid, st in plan.memory.storages.items():
            if st.state is not None:
                self.slots[vid] = self.state[st.state]
                continue
            t = plan.types[vid]
            perm = plan.layouts.get(vid)
            if perm is None:
                self.slots[vid] = np.ndarray(t.shape, t.dtype.np_dtype, buffer=self.arenas[st.dtype], offset=st.offset)
            else:  # stored in the layout the transpose after it wants
                base = np.ndarray([t.shape[p] for p in perm], t.dtype.np_dtype, buffer=self.arenas[st.dtype],
                                  offset=st.offset)
                self.slots[vid] = base.transpose([perm.index(i) for i in range(t.rank)])
        for vid, (axis, start) in plan.memory.slices.items():   # computed into its slice of a concat
            index = [slice(None)] * plan.types[vid].rank
            index[axis] = slice(start, start + plan.types[vid].shape[axis])
            self.slots[vid] = self.slots[plan.memory.value_storage[vid]][tuple(index)]
        for name, vout in plan.memory.state_in_place.items():
            self.slots[vout] = self.state[name]
        self._state_copies = [(self.state[n], vout) for n, (_, vout, _) in plan.states.items()
                              if plan.memory.state_in_place.get(n) != vout]

    def params_changed(self, params: dict[int, np.ndarray]) -> None:
        self._program = None

    def get_state(self, name: str) -> np.ndarray:
        return np.array(self.state[name], copy=True)

    def set_state(self, name: str, value: np.ndarray) -> None:
        np.copyto(self.state[name], value)

    def zero_state(self, name: str) -> None:
        self.state[name].fill(0)

    def reorder_state(self, name: str, rows: np.ndarray) -> None:
        buf = self.state[name]
        buf[...] = buf[rows]

    def bind_state(self, name: str, array: np.ndarray) -> None:
        """Use `array` (shared with another compiled graph, say) as state `name`'s buffer from now on."""
        self.bind_states({name: array})

    def bind_states(self, arrays: dict[str, np.ndarray]) -> None:
        """`bind_state` for many states at once, the slots rebuilt once."""
        for name, array in arrays.items():
            t = self.plan.states[name][2]
            if not isinstance(array, np.ndarray) or array.dtype != t.dtype.np_dtype or not array.flags.c_contiguous:
                raise TypeError(f"state {name!r}: the NumPy backend needs a C-contiguous {t.dtype} array, got "
                                f"{type(array).__name__} {getattr(array, 'dtype', '')}")
        self.state.update(arrays)
        self._make_slots()
        self._program = None

    # ---- binding ------------------------------------------------------------------------------
    def _bind(self, params: dict[int, np.ndarray]) -> None:
        plan = self.plan
        const: dict[int, np.ndarray] = {**plan.constants, **params}
        for step in plan.load_steps:
            result = KERNELS[step.op](*_resolve(step.inputs, const), **step.attrs)
            for vid, r in zip(step.outputs, result if isinstance(result, tuple) else (result,)):
                const[vid] = r
        fixed: dict[int, np.ndarray] = {**const, **self.slots}   # arrays known now (slot contents change)
        program, program_steps = [], []
        self.reference_steps = {}
        self.step_kernels = {}
        for index, step in enumerate(plan.steps):
            patches = _patches(step.inputs, fixed)
            if step.kind == "view":
                fn = _bound(KERNELS[step.op], step.attrs)
                if not patches:                       # a view of known arrays: make it once
                    result = fn(*_resolve(step.inputs, fixed))
                    for vid, r in zip(step.outputs, result if isinstance(result, tuple) else (result,)):
                        fixed[vid] = r
                        if all(x in const for x in flat_ids(step.inputs)):
                            const[vid] = r
                    continue
                program.append((fn, _resolve(step.inputs, fixed), patches, step.outputs))
                program_steps.append(index)
                continue
            program.append((self._compute(step, fixed, const, index), _resolve(step.inputs, fixed), patches, None))
            program_steps.append(index)
        self._program, self._program_steps = program, program_steps
        self._outputs = [(name, vid, fixed.get(vid)) for name, vid in plan.outputs.items()]
        self._fixed = fixed

    def _known(self, vid: int) -> np.ndarray:
        return self._fixed[vid]

    def _compute(self, step, fixed: dict, const: dict, index: int | None = None) -> Callable:
        """One callable that computes `step` into its slot(s); `step_kernels[index]` says which kind:
        "out=" (a specialized kernel writing the slot) or "reference" (reference kernel plus a copy)."""
        outs = [self.slots[v] for v in step.outputs]
        build = BUILDERS.get(step.op)
        if build is not None and len(outs) == 1:
            types = [([self.plan.types[v] for v in x] if isinstance(x, list) else
                      (self.plan.types[x] if x is not None else None)) for x in step.inputs]
            binding = StepBinding(step.op, step.attrs, outs[0], types,
                                  _resolve(step.inputs, fixed, missing=None),
                                  _resolve(step.inputs, const, missing=None), self._scratch_buffer)
            fn = build(binding)
            if fn is not None:
                self.step_kernels[index] = "out="
                return fn
        reference = _bound(KERNELS[step.op], step.attrs)
        self.reference_steps[step.op] = self.reference_steps.get(step.op, 0) + 1
        self.step_kernels[index] = "reference"

        def run(*args):
            result = reference(*args)
            for out, r in zip(outs, result if isinstance(result, tuple) else (result,)):
                np.copyto(out, r)
        return run

    def _scratch_buffer(self, role: str, shape: tuple, dtype) -> np.ndarray:
        """A buffer for a kernel's temporaries; steps run one at a time, so steps share it by role and shape."""
        key = (role, tuple(shape), np.dtype(dtype))
        if key not in self._scratch:
            self._scratch[key] = np.empty(shape, dtype)
        return self._scratch[key]

    # ---- running ------------------------------------------------------------------------------
    borrowed_outputs = True  # run(copy_outputs=False) is supported

    def run_async(self, inputs: dict[int, np.ndarray], params: dict[int, np.ndarray]) -> "DoneRun":
        """`run`, done by the time it returns (the interface a GPU backend overlaps with the host)."""
        return DoneRun(self.run(inputs, params))

    def run(self, inputs: dict[int, np.ndarray], params: dict[int, np.ndarray],
            copy_outputs: bool = True) -> dict[str, np.ndarray]:
        """Outputs by name: copies, or with copy_outputs=False views of the arena that the next run overwrites."""
        if self._program is None:
            self._bind(params)
        env = {vid: np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a)  # ascontiguousarray makes 0-d 1-d
               for vid, a in inputs.items()}
        program, timed = self._program, None
        if self.tracer is not None:
            timed = []
            program = [(_timed(fn, i, timed), *rest) for (fn, *rest), i in zip(program, self._program_steps)]
        with self.threads.run():
            for fn, args, patches, views in program:
                if patches:
                    args = _patched(args, patches, env)
                if views is None:
                    fn(*args)
                else:
                    result = fn(*args)
                    if isinstance(result, tuple):
                        env.update(zip(views, result))
                    else:
                        env[views[0]] = result
        for buf, vid in self._state_copies:
            np.copyto(buf, env[vid] if vid in env else self._known(vid))
        if timed is not None:
            self.tracer.add_run(self.plan.graph.name, self._kernel_spans(timed))
        outs = {name: env[vid] if known is None else known for name, vid, known in self._outputs}
        # C order: a view output (transposed heads, say) comes back as a plain array the next run takes as is
        return {name: np.array(a, copy=True, order="C") for name, a in outs.items()} if copy_outputs else outs


    def _kernel_spans(self, timed: list[tuple[int, int, int]]) -> list[tuple]:
        """One span per Plan kernel from its steps' (step, start ns, end ns); views belong to none."""
        by_kernel: dict[int, list[int]] = {}
        for i, t0, t1 in timed:
            k = self.plan.steps[i].kernel
            if k < 0:
                continue
            span = by_kernel.setdefault(k, [t0, t1, 0])
            span[0], span[1], span[2] = min(span[0], t0), max(span[1], t1), span[2] + t1 - t0
        spans = []
        for k, (t0, t1, busy) in sorted(by_kernel.items()):
            kern = self.plan.kernels[k]
            ops = "+".join(self.plan.steps[j].op for j in kern.steps)
            spans.append((ops, t0, t1, {"kernel": k, "archetype": kern.archetype, "pattern": kern.pattern,
                                        "busy_us": busy / 1e3}))
        return spans


def _timed(fn, step: int, into: list):
    """fn, appending (step, start ns, end ns) to `into` on each call (traced runs only)."""
    def run(*args):
        t0 = time.perf_counter_ns()
        try:
            return fn(*args)
        finally:
            into.append((step, t0, time.perf_counter_ns()))
    return run


class DoneRun:
    def __init__(self, outputs: dict):
        self._outputs = outputs

    def wait(self) -> dict[str, np.ndarray]:
        return self._outputs


def _resolve(inputs, known: dict, missing=0):
    """Arguments from value ids: the known arrays, `missing` where a value is not known yet."""
    return [([known.get(i, missing) for i in x] if isinstance(x, list) else
             (known.get(x, missing) if x is not None else None)) for x in inputs]


def _patches(inputs, known: dict) -> tuple:
    """(position, value id) or (position, index in the list, value id) for each argument a run supplies."""
    out = []
    for pos, x in enumerate(inputs):
        if isinstance(x, list):
            out += [(pos, j, v) for j, v in enumerate(x) if v not in known]
        elif x is not None and x not in known:
            out.append((pos, None, x))
    return tuple(out)


def _patched(args: list, patches: tuple, env: dict) -> list:
    args = list(args)
    for pos, j, vid in patches:
        if j is None:
            args[pos] = env[vid]
        else:
            args[pos] = list(args[pos])
            args[pos][j] = env[vid]
    return args


def _bound(fn, attrs: dict):
    if not attrs:
        return fn
    return lambda *args: fn(*args, **attrs)
