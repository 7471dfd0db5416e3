"""Runs a Plan on the GPU as Triton kernels over the Plan's memory, replayed as a CUDA graph.

Lifecycle:
1. construction lowers the Plan to one launch per kernel (`lowering.py`) and allocates the
   Plan's arenas (one per dtype, offsets from the Plan's memory plan) once; inputs, states,
   parameters, values computed from parameters only (the Plan's load steps), constants
   and contiguous copies get buffers of their own; launch workspaces share one buffer.
2. `params_changed(params)` uploads weights once (into fixed addresses, so a captured graph
   stays valid) and evaluates the load steps. `bind_params` makes parameters use another
   executor's buffers instead (`param_buffer`: a model's prefill and decode graphs hold one copy of
   the weights); once every parameter is bound, this executor's own parameter buffer is freed.
3. the first run compiles every kernel, the distinct ones concurrently (`precompile.py`; Triton
   caches the binaries on disk), and runs eagerly; on a GPU the distinct kernels started
   compiling at construction, in worker processes (`compile_workers.py`), so the first run
   mostly loads binaries;
   on a GPU the launch sequence is then captured as a CUDA graph, and later runs copy the
   inputs in, replay the graph and copy the outputs out.

`run(inputs, params)` is the backend interface (NumPy in and out, like the NumPy executor).
States stay on the device between runs (`state`, `get_state`, `set_state`, `bind_state(s)`).

With a `tracer` set (kiln.runtime.trace, set by CompiledGraph while a trace is recorded) a run
launches eagerly instead of replaying its CUDA graph and times each launch with a pair of CUDA
events (host time under TRITON_INTERPRET=1); without one nothing is timed.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from kiln.compile.plan import Plan

from .device import copy_into, default_device, device_properties, interpreting, to_numpy
from .lowering import ALIGN, Operand, Program, lower
from . import compile_workers as workers
from . import kernels_on_disk
from .precompile import PrecompileStats, precompile


class TritonExecutor:
    tracer = None   # a kiln.runtime.trace.Trace while one is recorded

    def __init__(self, plan: Plan, device: str | torch.device | None = None, *, cuda_graph: bool = True,
                 kernels_key: str | None = None):
        """`kernels_key`: the plan's compile-cache key, under which the first run remembers which
        Triton binaries its kernels are (`kernels_on_disk.py`), so a later process's first run only
        loads them (and starts no compile workers)."""
        t0 = time.perf_counter()
        self.plan = plan
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and interpreting():
            raise RuntimeError("TRITON_INTERPRET=1 runs kernels on CPU tensors; use device='cpu' with it")
        if self.device.type == "cpu" and not interpreting():
            raise RuntimeError("the Triton backend runs on a CUDA GPU; on a CPU only with TRITON_INTERPRET=1")
        num_sms = device_properties(torch.cuda.current_device() if self.device.index is None else
                                    self.device.index).multi_processor_count if self.device.type == "cuda" else 4
        self.program: Program = lower(plan, num_sms=num_sms, device_type=self.device.type)
        t1 = time.perf_counter()
        self.arenas = {dt: torch.empty(max(n, ALIGN), dtype=torch.uint8, device=self.device)
                       for dt, n in plan.memory.arenas.items()}
        self.arena_bytes = sum(plan.memory.arenas.values())
        self._persistent = {kind: self._allocate(kind) for kind in ("input", "param", "static", "const", "temp")}
        self._persistent["scratch"] = self._allocate_scratch()
        self.state: dict[str, torch.Tensor] = {}
        self._bound_params: dict[int, torch.Tensor] = {}   # param storage index -> another executor's buffer
        for name, op in self.program.states.items():
            st = op.storage
            self.state[name] = torch.zeros(tuple(plan.states[name][2].shape), dtype=st.dtype, device=self.device)
        self._bind_tensors()
        for vid, op in self.program.consts.items():
            copy_into(self._tensor(op), np.asarray(plan.constants[vid]))
        self._params_ready = False
        self.cuda_graph = cuda_graph and self.device.type == "cuda" and \
            all(l.graph_safe for l in self.program.launches)
        self._compiled = False
        self.precompile_stats = None
        self.stage_seconds = {"lower": t1 - t0, "arena": time.perf_counter() - t1}
        # the kernels compile in worker processes from now on, while the caller goes on (plans the next graph)
        self.kernels_key = kernels_key if self.device.type == "cuda" else None
        self._kernels_known = self.kernels_key is not None and kernels_on_disk.on_disk(self.kernels_key)
        self._workers = workers.start(self.program.launches, self.calls) \
            if self.device.type == "cuda" and not self._kernels_known else None
        self.worker_stats = None

    # ---- memory ------------------------------------------------------------------------------
    def _allocate(self, kind: str) -> torch.Tensor:
        off = 0
        for s in self.program.storages:
            if s.kind == kind:
                s.offset = off
                off += (s.nbytes + ALIGN - 1) // ALIGN * ALIGN
        return torch.empty(max(off, ALIGN), dtype=torch.uint8, device=self.device)

    def _allocate_scratch(self) -> torch.Tensor:
        """Each launch's workspaces from offset 0 of one shared buffer (launches run one at a time)."""
        top: dict[int, int] = {}
        for s in self.program.storages:
            if s.kind == "scratch":
                s.offset = top.get(s.vid, 0)
                top[s.vid] = s.offset + (s.nbytes + ALIGN - 1) // ALIGN * ALIGN
        return torch.empty(max([ALIGN, *top.values()]), dtype=torch.uint8, device=self.device)

    def _base(self, st) -> torch.Tensor:
        if st.kind == "state":
            return self.state[st.state].view(-1)
        if st.kind == "param" and st.index in self._bound_params:
            return self._bound_params[st.index]
        buf = self.arenas[st.arena] if st.kind == "arena" else self._persistent[st.kind]
        return buf[st.offset: st.offset + st.nbytes].view(st.dtype)

    def _pinned_outputs(self) -> list[dict[str, torch.Tensor]]:
        """Two pinned host buffers per output: run k's copy lands in one while run k-1's is read."""
        if self.device.type != "cuda":
            return [{}, {}]
        return [{n: torch.empty(tuple(t.shape), dtype=t.dtype, pin_memory=True) for n, t in self.outputs.items()}
                for _ in range(2)]

    def _bind_tensors(self) -> None:
        """Resolve every launch's operands to real tensors."""
        self._real: dict[int, torch.Tensor] = {}
        self.calls = [(l.fn, self._resolve(l.args)) for l in self.program.launches]
        # which storages each launch reads or writes: a rebound state re-resolves only its launches
        self._launch_storages = [_storages_of(l.args) for l in self.program.launches]
        self._bind_io()
        self._host_outputs, self._flip = self._pinned_outputs(), 0

    def _bind_io(self) -> None:
        self.inputs = {name: self._tensor(op) for name, op in self.program.inputs.items()}
        self.outputs = {name: self._tensor(op) for name, op in self.program.outputs.items()}
        self._input_by_vid = {vid: self.inputs[name] for name, (vid, _) in self.plan.inputs.items()}
        self._input_names = {vid: n for n, (vid, _) in self.plan.inputs.items()}
        self._graph = None   # a captured CUDA graph holds the old addresses

    def _rebind(self, names) -> None:
        """Resolve again what reads or writes the states `names` (their buffers changed), nothing else;
        the pinned host outputs keep their shapes, so they stay."""
        self._rebind_storages({st.index for st in self.program.storages if st.kind == "state" and st.state in names})

    def _rebind_storages(self, changed: set[int]) -> None:
        """Resolve again the launches that read or write the storages `changed` (by index)."""
        for index in changed:
            self._real.pop(index, None)
        for i, launch in enumerate(self.program.launches):
            if not changed.isdisjoint(self._launch_storages[i]):
                self.calls[i] = (launch.fn, self._resolve(launch.args))
        self._bind_io()

    # ---- state -------------------------------------------------------------------------------
    def get_state(self, name: str) -> np.ndarray:
        return to_numpy(self.state[name])

    def set_state(self, name: str, value: np.ndarray) -> None:
        copy_into(self.state[name], value)

    def zero_state(self, name: str) -> None:
        self.state[name].zero_()

    def reorder_state(self, name: str, rows: np.ndarray) -> None:
        buf = self.state[name]
        buf.copy_(buf.index_select(0, torch.as_tensor(rows, device=buf.device)))

    def bind_state(self, name: str, buffer: torch.Tensor) -> None:
        """Use `buffer` (another compiled graph's state, say) as state `name` from now on."""
        self.bind_states({name: buffer})

    def bind_states(self, buffers: dict[str, torch.Tensor]) -> None:
        """`bind_state` for many states at once, with one rebind (a KV cache is two states per layer)."""
        for name, buffer in buffers.items():
            cur = self.state[name]
            if not isinstance(buffer, torch.Tensor) or buffer.dtype != cur.dtype or buffer.device != cur.device \
                    or tuple(buffer.shape) != tuple(cur.shape) or not buffer.is_contiguous():
                raise TypeError(f"state {name!r}: expected a contiguous {cur.dtype} tensor of shape "
                                f"{tuple(cur.shape)} on {cur.device}, got "
                                f"{getattr(buffer, 'dtype', type(buffer).__name__)} "
                                f"{tuple(getattr(buffer, 'shape', ()))} on {getattr(buffer, 'device', '?')}")
        self.state.update(buffers)
        self._rebind(set(buffers))

    def _tensor(self, op: Operand) -> torch.Tensor:
        base = self._real.get(op.storage.index)
        if base is None:
            base = self._real[op.storage.index] = self._base(op.storage)
        m = op.meta
        return base.as_strided(tuple(m.shape), tuple(m.stride()), base.storage_offset() + m.storage_offset())

    def _resolve(self, x):
        if isinstance(x, Operand):
            return self._tensor(x)
        if isinstance(x, list):
            return [self._resolve(y) for y in x]
        if isinstance(x, tuple):
            return tuple(self._resolve(y) for y in x)
        return x

    # ---- parameters --------------------------------------------------------------------------
    def param_buffer(self, vid: int) -> torch.Tensor | None:
        """The flat device buffer parameter `vid` lives in (None: no launch reads it), for `bind_params`."""
        op = self.program.params.get(vid)
        return None if op is None else self._base(op.storage)

    def bind_params(self, buffers: dict[int, torch.Tensor]) -> None:
        """Use `buffers` (parameter value id -> another executor's `param_buffer`) as these parameters'
        storage from now on: shared, so loading weights through either executor updates both."""
        changed, home = set(), self._persistent["scratch"].device   # "cuda:0" where self.device may say "cuda"
        for vid, buf in buffers.items():
            op = self.program.params.get(vid)
            if op is None or buf is None:
                continue
            st = op.storage
            if not isinstance(buf, torch.Tensor) or buf.dtype != st.dtype or buf.device != home \
                    or buf.dim() != 1 or buf.numel() != st.numel:
                raise TypeError(f"parameter {st.vid}: expected a flat {st.dtype} tensor of {st.numel} elements on "
                                f"{home}, got {getattr(buf, 'dtype', type(buf).__name__)} "
                                f"{tuple(getattr(buf, 'shape', ()))} on {getattr(buf, 'device', '?')}")
            self._bound_params[st.index] = buf
            changed.add(st.index)
        if changed:
            self._rebind_storages(changed)
        if all(op.storage.index in self._bound_params for op in self.program.params.values()):
            self._persistent["param"] = torch.empty(0, dtype=torch.uint8, device=self.device)   # nothing reads it

    def params_changed(self, params: dict[int, np.ndarray], on_device: set[int] = frozenset()) -> None:
        """Upload the weights into their fixed buffers (except those in `on_device`: bound buffers that
        already hold them) and evaluate the Plan's load steps."""
        t0 = time.perf_counter()
        for vid, op in self.program.params.items():
            if vid in params and vid not in on_device:
                copy_into(self._tensor(op), np.asarray(params[vid]))
        if self.plan.load_steps:
            from kiln.backends.numpy.kernels import KERNELS
            env = {**self.plan.constants, **params}
            for step in self.plan.load_steps:
                args = [([env[i] for i in x] if isinstance(x, list) else (env[x] if x is not None else None))
                        for x in step.inputs]
                res = KERNELS[step.op](*args, **step.attrs)
                for vid, r in zip(step.outputs, res if isinstance(res, tuple) else (res,)):
                    env[vid] = r
            for vid, op in self.program.statics.items():
                copy_into(self._tensor(op), np.asarray(env[vid]))
        self._params_ready = all(v in params for v in self.program.params)
        self.stage_seconds["upload"] = self.stage_seconds.get("upload", 0.0) + time.perf_counter() - t0

    # ---- running -----------------------------------------------------------------------------
    def _launch_all(self) -> None:
        if self.tracer is not None:
            return self._launch_traced()
        self._launch_plain()

    def _launch_plain(self) -> None:
        for fn, args in self.calls:
            fn(*args)

    def _launch_traced(self) -> None:
        """Every launch, timed: CUDA events on a GPU (read when the trace is written), host time otherwise."""
        launches, name = self.program.launches, self.plan.graph.name
        compiling = not self._compiled

        def args_of(i, launch):
            return {"launch": i, "archetype": launch.archetype, "kernel": type(self.calls[i][0]).__name__,
                    **({"first_run_compiles": True} if compiling else {})}

        if self.device.type != "cuda":
            spans = []
            for i, (launch, (fn, args)) in enumerate(zip(launches, self.calls)):
                t0 = time.perf_counter_ns()
                fn(*args)
                spans.append((launch.label, t0, time.perf_counter_ns(), args_of(i, launch)))
            self.tracer.add_run(name, spans)
            return
        anchor = time.perf_counter_ns()   # the device timeline is placed on the host clock here
        marks = []
        for fn, args in self.calls:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            marks.append((start, end))

        def spans():
            marks[-1][1].synchronize()
            first = marks[0][0]
            out = []
            for i, (launch, (start, end)) in enumerate(zip(launches, marks)):
                t0 = anchor + int(first.elapsed_time(start) * 1e6)
                out.append((launch.label, t0, t0 + int(start.elapsed_time(end) * 1e6), args_of(i, launch)))
            return out
        if marks:
            self.tracer.add_run(name, spans, clock="device")

    def warmup(self) -> None:
        """Compile every kernel now (one eager pass over whatever the buffers hold) and capture the
        CUDA graph, so the first real run only replays. Without it the first run compiles."""
        if not self._compiled:
            self._compile_pass()
        if self.cuda_graph and self._graph is None:
            self._capture()

    def _compile_pass(self) -> None:
        """Compile every distinct kernel concurrently (`precompile.py`), then run once eagerly (which
        compiles whatever the concurrent pass missed and loads each binary)."""
        t0 = time.perf_counter()
        if self._workers is not None:
            self.worker_stats, self._workers = self._workers.wait(), None
        ws = self.worker_stats
        known = self._kernels_known
        with kernels_on_disk.Recorder() as recorder:
            if known:    # an earlier process ran this plan: its binaries are on disk, the eager pass loads them
                self.precompile_stats = PrecompileStats(mode="on disk")
            elif ws is not None and ws.complete:   # the workers filed every binary: likewise
                self.precompile_stats = PrecompileStats(launches=ws.distinct, threads=ws.workers, mode="workers",
                                                        seconds=ws.seconds)
            else:
                self.precompile_stats = precompile(self.program.launches, self.calls, load=self.device.type == "cuda")
            if self.precompile_stats.error:
                self.compile_error = self.precompile_stats.error
            self.stage_seconds["kernel_compile_parallel"] = time.perf_counter() - t0
            self._launch_all()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        if self.kernels_key is not None and not known and not self.precompile_stats.error:
            kernels_on_disk.store(self.kernels_key, recorder.seen)
        self.stage_seconds["kernel_compile"] = time.perf_counter() - t0
        self._compiled = True

    def _capture(self) -> None:
        """Record the launch sequence as a CUDA graph (recording does not execute it)."""
        t0 = time.perf_counter()
        try:
            # cuBLAS keeps a workspace per stream; one allocated while recording would belong to the
            # graph's private pool and be reused after the graph is freed (as torch.compile does: clear
            # the workspaces before and after recording)
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)
            clear()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._launch_plain()
            torch.cuda.synchronize(self.device)
            clear()
            self._graph = g
        except Exception as e:  # a launch that cannot be captured: run eagerly, and say so
            self._graph = None
            self.cuda_graph = False
            self.graph_error = f"{type(e).__name__}: {e}"
        self.stage_seconds["graph_capture"] = time.perf_counter() - t0

    def _execute(self) -> None:
        if not self._compiled:      # the first run compiles its kernels as it goes
            self._compile_pass()
            return
        if self.tracer is not None:  # a traced run times each launch, so it cannot replay a CUDA graph
            self._launch_all()
            return
        if self.cuda_graph and self._graph is None:
            self._capture()
        if self._graph is not None:
            self._graph.replay()
        else:
            self._launch_all()

    def _check_ids(self, name: str, arr) -> None:
        bound = self.program.id_checks.get(name)
        if bound is None:
            return
        a = arr if isinstance(arr, np.ndarray) else None
        if a is None:
            return
        if a.size and (a.min() < 0 or a.max() >= bound):
            raise IndexError(f"input {name!r}: token ids must be in [0, {bound}), got min {a.min()} max {a.max()}")

    def run(self, inputs: dict[int, np.ndarray], params: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_async(inputs, params).wait()

    def run_async(self, inputs: dict[int, np.ndarray], params: dict[int, np.ndarray]) -> "PendingRun":
        """Copy the inputs in, launch the step and queue the outputs' copies to pinned host memory,
        without waiting: the host can prepare the next step while the GPU runs this one."""
        if not self._params_ready:
            self.params_changed(params)   # load_params already did, unless the weights were never bound
        names = self._input_names
        for vid, arr in inputs.items():
            a = np.asarray(arr)
            self._check_ids(names[vid], a)
            copy_into(self._input_by_vid[vid], a)
        self._execute()
        if self.device.type != "cuda":
            return PendingRun({name: to_numpy(t) for name, t in self.outputs.items()}, None)
        self._flip ^= 1
        host = self._host_outputs[self._flip]
        for name, t in self.outputs.items():
            host[name].copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingRun(host, event)

    # ---- reporting ---------------------------------------------------------------------------
    def stats(self) -> dict:
        launches = self.program.launches
        return {
            "launches": len(launches),
            "by_archetype": dict(Counter(l.archetype for l in launches)),
            "fallbacks": {f"{op} [{kind}]": n for (op, kind), n in self.program.fallbacks.items()},
            "fused": dict(self.program.fused),
            "arena_bytes": self.arena_bytes,
            "param_bytes": sum(s.nbytes for s in self.program.storages if s.kind == "param"),
            "states": sorted(self.state),
            "cuda_graph": self._graph is not None,
            "stage_seconds": dict(self.stage_seconds),
            "precompile": vars(self.precompile_stats).copy() if self.precompile_stats else None,
            "compile_workers": vars(self.worker_stats).copy() if self.worker_stats else None,
        }

    def describe(self) -> str:
        """One line per launch: archetype and the ops it covers."""
        return "\n".join(f"{i:4d} {l.archetype:10s} {l.label}" for i, l in enumerate(self.program.launches))


def _storages_of(x) -> set[int]:
    """The storage indices of the Operands in a launch's arguments (nested lists and tuples)."""
    if isinstance(x, Operand):
        return {x.storage.index}
    if isinstance(x, (list, tuple)):
        return set().union(*map(_storages_of, x)) if x else set()
    return set()


class PendingRun:
    """The outputs of a launched run; `wait()` returns them as NumPy arrays once the GPU is done."""

    def __init__(self, outputs: dict, event):
        self._outputs, self._event = outputs, event

    def wait(self) -> dict[str, np.ndarray]:
        if self._event is None:
            return self._outputs
        self._event.synchronize()
        return {name: to_numpy(t) for name, t in self._outputs.items()}


__all__ = ["TritonExecutor"]
