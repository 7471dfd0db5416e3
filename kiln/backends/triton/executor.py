"""Runs a Plan on the GPU as Triton kernels over one torch-allocated arena, replayed as a CUDA graph.

Lifecycle:
1. construction lowers the Plan to launches (`lowering.py`), plans the activation arena by
   liveness over those launches and allocates it once, with the inputs' buffers in it;
   parameters, values computed from parameters only (the Plan's load steps) and constants
   get one persistent buffer each, and so does the state (e.g. a KV cache updated in place).
2. `params_changed(params)` uploads weights once (into fixed addresses, so a captured graph
   stays valid) and evaluates the load steps.
3. the first run compiles every kernel (Triton caches the binaries on disk) and runs eagerly;
   on a GPU the launch sequence is then captured as a CUDA graph, and later runs copy the
   inputs in, replay the graph and copy the outputs out.

`run(inputs, params)` is the backend interface (NumPy in and out, like the NumPy executor);
`run_device(feeds)` takes and returns device tensors, so a decode loop can keep its KV cache
on the GPU: outputs paired with inputs in `state` are written in place into those inputs'
buffers, and state inputs not fed keep what the last run wrote.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from kiln.compile.plan import Plan

from .device import copy_into, default_device, interpreting, to_numpy
from .kernels.launch import compile_only
from .lowering import ALIGN, Operand, Program, lower, plan_arena


def kv_state_pairs(plan: Plan) -> dict[str, str]:
    """The decoder KV-cache convention: output `present.X` updates input `past.X` of the same type."""
    pairs = {}
    for name, vid in plan.outputs.items():
        if name.startswith("present."):
            src = "past." + name[len("present."):]
            if src in plan.inputs and plan.inputs[src][1] == plan.types[vid]:
                pairs[name] = src
    return pairs


class TritonExecutor:
    def __init__(self, plan: Plan, device: str | torch.device | None = None, *, state: dict[str, str] | None = None,
                 cuda_graph: bool = True):
        t0 = time.perf_counter()
        self.plan = plan
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and interpreting():
            raise RuntimeError("TRITON_INTERPRET=1 runs kernels on CPU tensors; use device='cpu' with it")
        if self.device.type == "cpu" and not interpreting():
            raise RuntimeError("the Triton backend runs on a CUDA GPU; on a CPU only with TRITON_INTERPRET=1")
        num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count \
            if self.device.type == "cuda" else 4
        self.state = kv_state_pairs(plan) if state is None else dict(state)
        self.program: Program = lower(plan, self.state, num_sms=num_sms, device_type=self.device.type)
        t1 = time.perf_counter()
        self.arena_bytes = plan_arena(self.program)
        self.arena = torch.empty(max(self.arena_bytes, ALIGN), dtype=torch.uint8, device=self.device)
        self._persistent = {kind: self._allocate(kind) for kind in ("param", "static", "const", "state")}
        self._real: dict[int, torch.Tensor] = {}
        self.calls = [(l.fn, self._resolve(l.args)) for l in self.program.launches]
        self.inputs = {name: self._tensor(op) for name, op in self.program.inputs.items()}
        self.outputs = {name: self._tensor(op) for name, op in self.program.outputs.items()}
        self._input_by_vid = {vid: self.inputs[name] for name, (vid, _) in plan.inputs.items()}
        for vid, op in self.program.consts.items():
            copy_into(self._tensor(op), np.asarray(plan.constants[vid]))
        self._params_ready = False
        self._param_ids: dict[int, int] = {}
        self.cuda_graph = cuda_graph and self.device.type == "cuda" and \
            all(l.graph_safe for l in self.program.launches)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._compiled = False
        self.stage_seconds = {"lower": t1 - t0, "arena": time.perf_counter() - t1}

    # ---- memory ------------------------------------------------------------------------------
    def _allocate(self, kind: str) -> torch.Tensor:
        sts = [s for s in self.program.storages if s.kind == kind]
        off = 0
        for s in sts:
            s.offset = off
            off += (s.nbytes + ALIGN - 1) // ALIGN * ALIGN
        buf = torch.empty(max(off, ALIGN), dtype=torch.uint8, device=self.device)
        if kind == "state":
            buf.zero_()
        return buf

    def _base(self, st) -> torch.Tensor:
        buf = self._persistent.get(st.kind, self.arena) if st.kind in self._persistent else self.arena
        return buf[st.offset: st.offset + st.nbytes].view(st.dtype)

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
    def params_changed(self, params: dict[int, np.ndarray]) -> None:
        """Upload the bound weights into their fixed buffers and evaluate the Plan's load steps."""
        t0 = time.perf_counter()
        for vid, op in self.program.params.items():
            if vid not in params:
                continue
            copy_into(self._tensor(op), np.asarray(params[vid]))
            self._param_ids[vid] = id(params[vid])
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
        for fn, args in self.calls:
            fn(*args)

    def warmup(self) -> None:
        """Compile every kernel now (one eager pass over whatever the buffers hold) and capture the
        CUDA graph, so the first real run only replays. Without it the first run compiles."""
        if not self._compiled:
            self._compile_pass()
        if self.cuda_graph and self._graph is None:
            self._capture()

    def _compile_parallel(self) -> None:
        """Build the binaries of distinct kernels from several threads (compile-only launches), so
        Triton's compile steps that leave the GIL (LLVM, ptxas) overlap; the eager pass after it then
        finds every kernel compiled. KILN_COMPILE_THREADS=0 turns this off."""
        threads = int(os.environ.get("KILN_COMPILE_THREADS", "8"))
        if threads <= 1 or self.device.type != "cuda":
            return
        seen, todo = set(), []
        for launch, (fn, args) in zip(self.program.launches, self.calls):
            if launch.archetype == "fallback":
                continue
            key = _launch_key(fn, args)
            if key not in seen:
                seen.add(key)
                todo.append((fn, args))

        # Triton's own async mode: the main thread specializes each kernel and submits its compile to
        # the pool; leaving the block waits for them and files each binary in its kernel's cache
        try:
            from triton.runtime._async_compile import AsyncCompileMode
            with ThreadPoolExecutor(max_workers=threads) as pool, AsyncCompileMode(pool), compile_only():
                for fn, args in todo:
                    fn(*args)
        except Exception as e:  # never fatal: the eager pass compiles whatever is missing
            self.compile_error = f"{type(e).__name__}: {e}"

    def _compile_pass(self) -> None:
        t0 = time.perf_counter()
        self._compile_parallel()
        self.stage_seconds["kernel_compile_parallel"] = time.perf_counter() - t0
        self._launch_all()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
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
                self._launch_all()
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
        if not self._params_ready or any(self._param_ids.get(v) != id(a) for v, a in params.items()
                                         if v in self.program.params):
            self.params_changed(params)
        names = {vid: n for n, (vid, _) in self.plan.inputs.items()}
        for vid, arr in inputs.items():
            self._check_ids(names[vid], np.asarray(arr))
            copy_into(self._input_by_vid[vid], np.asarray(arr))
        self._execute()
        return {name: to_numpy(t) for name, t in self.outputs.items()}

    def run_device(self, feeds: dict[str, "torch.Tensor | np.ndarray"] | None = None) -> dict[str, torch.Tensor]:
        """Run on device tensors by input name; inputs not fed keep their buffers' contents (state).

        Returns the output buffers themselves (no copy): they are valid until the next run."""
        if not self._params_ready:
            raise RuntimeError("parameters are not uploaded; call params_changed (CompiledGraph.load_params)")
        self.feed(feeds or {})
        self._execute()
        return self.outputs

    def feed(self, feeds: dict[str, "torch.Tensor | np.ndarray"]) -> None:
        """Copy inputs (e.g. a prefilled KV cache into the state buffers) without running."""
        for name, x in feeds.items():
            if name not in self.inputs:
                raise KeyError(f"unknown input {name!r}; expected one of {sorted(self.inputs)}")
            dst = self.inputs[name]
            if isinstance(x, np.ndarray):
                self._check_ids(name, x)
                copy_into(dst, x)
            else:
                if tuple(x.shape) != tuple(dst.shape) or x.dtype != dst.dtype:
                    raise ValueError(f"input {name!r}: expected {tuple(dst.shape)} {dst.dtype}, "
                                     f"got {tuple(x.shape)} {x.dtype}")
                dst.copy_(x, non_blocking=True)

    # ---- reporting ---------------------------------------------------------------------------
    def stats(self) -> dict:
        launches = self.program.launches
        return {
            "launches": len(launches),
            "by_archetype": dict(Counter(l.archetype for l in launches)),
            "fallbacks": {f"{op} [{kind}]": n for (op, kind), n in self.program.fallbacks.items()},
            "fused": dict(self.program.fused),
            "arena_bytes": self.arena_bytes,
            "param_bytes": int(self._persistent["param"].numel()),
            "state": dict(self.state),
            "cuda_graph": self._graph is not None,
            "stage_seconds": dict(self.stage_seconds),
        }

    def describe(self) -> str:
        """One line per launch: archetype and the ops it covers."""
        return "\n".join(f"{i:4d} {l.archetype:10s} {l.label}" for i, l in enumerate(self.program.launches))


def _launch_key(fn, args) -> tuple:
    """What makes two launches the same compiled kernel, approximately: the launcher's settings and
    the dtypes of its tensors (a miss only costs a duplicate compile)."""
    attrs = tuple(sorted((k, repr(v)) for k, v in vars(fn).items()
                         if isinstance(v, (int, float, str, bool, tuple, dict, type(None)))))

    def dtypes(x):
        if isinstance(x, torch.Tensor):
            return (str(x.dtype),)
        if isinstance(x, (list, tuple)):
            return tuple(d for y in x for d in dtypes(y))
        return ("-",)

    return (type(fn).__name__, attrs, dtypes(args))


__all__ = ["TritonExecutor", "kv_state_pairs"]
