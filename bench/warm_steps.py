"""Where a warm compile of SmolLM2-135M's prefill + decode pair spends its CPU time, step by step, no GPU.

The graphs are planned for cuda (a plan-cache hit once the cache is filled), lowered as for an
H200 and bound over CPU tensors (bench/compile_only_target.py); the decode graph then shares the
prefill graph's KV-cache states, as CausalLM does, and every kernel is warm-loaded from Triton's
cache in compile-only mode for sm_90 (kiln/backends/triton/precompile.py). Run it twice with the
same cache directories: the first run fills them, the second is the warm compile.

    KILN_CACHE_DIR=/tmp/c/kiln TRITON_CACHE_DIR=/tmp/c/triton python bench/warm_steps.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, HERE)
    t = time.perf_counter()
    import compile_only_target as C
    import compile_time as T
    import kiln.backends.triton  # noqa: F401  (imports are not compile time)
    from kiln.api import reference_evaluate
    from kiln.backends.triton.precompile import precompile, start_triton_key, wait_triton_key
    from kiln.compile import compile_graph
    from kiln.models.llama import LlamaGraphs
    from kiln.runtime.compiled_graph import CompiledGraph
    from kiln.runtime.language_model import _feed_itself, _select_greedy
    import triton  # noqa: F401
    print(f"imports {time.perf_counter() - t:.3f}s (not counted)")

    C.install()
    graphs = LlamaGraphs(T._config(False), "bfloat16")
    cache_len = -(-(args.prompt + args.new) // 64) * 64
    pre = graphs.prefill_graph(1, args.prompt, last_only=True, cache_len=cache_len)
    _select_greedy(pre)
    dec = graphs.decode_graph(1, cache_len)
    _select_greedy(dec)
    _feed_itself(dec, (), None)

    rows: list[tuple[str, float]] = []

    def step(name, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0))
        return out

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    start_triton_key()
    wait_triton_key()
    rows.append(("triton_key (background on the GPU path)", time.perf_counter() - t0))
    pool: dict = {}
    compiled = []
    for g, kind in ((pre, "prefill"), (dec, "decode")):
        plan, report = step(f"{kind}: plan (compile cache)",
                            lambda: compile_graph(g, device="cuda", evaluate=reference_evaluate))
        ex = step(f"{kind}: TritonExecutor.__init__", lambda: C.executor(plan))
        rows.append((f"{kind}:   of which lower", ex.stage_seconds["lower"]))
        rows.append((f"{kind}:   of which arenas + bind", ex.stage_seconds["arena"]))
        cg = CompiledGraph(plan, ex, "cuda", report=report)
        step(f"{kind}: share_states ({len(cg.state_types)} states)", lambda: cg.share_states(pool))
        compiled.append((kind, cg, report.cache))
    for kind, cg, _ in compiled:
        ex = cg.executor
        st = step(f"{kind}: precompile ({len(ex.program.launches)} launches)",
                  lambda: precompile(ex.program.launches, ex.calls))
        if st.error:
            print("precompile error:", st.error)
    total = time.perf_counter() - t_all
    print(f"plan cache: {', '.join(f'{k} {c}' for k, _, c in compiled)}")
    for name, s in rows:
        print(f"  {name:<44} {s * 1e3:8.1f} ms")
    print(f"  {'total':<44} {total * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
