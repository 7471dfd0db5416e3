"""Python's cyclic garbage collector paused while compile time allocates objects by the million.

Building, differentiating, optimizing, planning, unpickling and lowering a graph allocate millions
of objects and free few of them, so CPython keeps starting collections, each older generation's
traversing everything alive -- work that finds almost nothing to free. On a 2-core machine, for
the SmolLM2-135M training step (its graph built, planned for cuda and lowered, two runs each):
planning it cold 1.9-2.8 s -> 1.3-1.7 s, reading its plan back 0.50 s -> 0.16 s, lowering its 1,925
launches 0.5-0.7 s -> 0.3-0.5 s.
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
