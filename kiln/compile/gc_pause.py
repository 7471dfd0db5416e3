"""Python's cyclic garbage collector paused while compile time allocates objects by the million.

Building, differentiating, optimizing, planning, unpickling and lowering a graph allocate millions
of objects and free few of them, so CPython keeps starting collections, each older generation's
traversing everything alive -- work that finds almost nothing to free. On the 2-core machine, for
the SmolLM2-135M training step: planning it cold 4.2 s -> 2.3 s, reading its plan back 0.7-1.0 s ->
0.25 s, lowering it for Triton 1.1-1.6 s -> 0.5 s (`python bench/compile_time.py --workload train`).
Reference counting still frees what goes out of use inside the block; reference cycles made there
wait for the first collection after it. Blocks nest: only the outermost turns collection back on.
KILN_GC_PAUSE=0 leaves the collector alone (A/B measurements).
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager


@contextmanager
def gc_paused():
    if os.environ.get("KILN_GC_PAUSE", "1").strip().lower() in ("0", "false", "no", "off"):
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
