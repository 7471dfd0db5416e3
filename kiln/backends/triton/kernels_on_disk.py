"""Which Triton binaries a plan's kernels are, remembered on disk, so a later process skips the compile pass.

A first run compiles (or reads from Triton's cache) every kernel of its plan. A later process running
the same plan (the same compile-cache key) would run the in-process precompile pass only to find each
binary on disk again: 0.3 s (SmolLM2-135M prefill + decode) to 0.7 s (its training step) of
specializing every launch on an H200. `Recorder` collects, during a first run, the files (binary,
metadata, IRs) of every kernel Triton's `compile` returns, through Triton's compilation listener;
`store(key, seen)` keeps their paths at `$KILN_CACHE_DIR/triton_kernels/<key>.json` with Triton's
version; `on_disk(key)` says whether every one of them is still there, and the first run then only
loads them.

A kernel this process had compiled before is not seen again (Triton's `compile` is not called for
it), but it is on disk too: Triton files every binary it compiles. Should a binary be missing after
all, the first run's eager pass compiles it: slower, never wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading

from kiln.files import kiln_cache_root


def _path(key: str):
    return kiln_cache_root() / "triton_kernels" / f"{key}.json"


def _version() -> str:
    import triton
    return triton.__version__


class Recorder:
    """Within the block, the cache files of every kernel Triton's `compile` returns (compiled or
    read from its cache), from any thread, are added to `seen`."""

    def __init__(self):
        self.seen: set[str] = set()
        self._lock = threading.Lock()
        self._knobs = self._previous = None

    def __enter__(self) -> "Recorder":
        try:
            from triton import knobs
            knobs.compilation.listener   # absent in older Triton: nothing is recorded
        except (ImportError, AttributeError):
            return self
        self._knobs, self._previous = knobs, knobs.compilation.listener

        def listener(*, src, metadata, metadata_group, times, cache_hit, **rest):
            with self._lock:
                self.seen.update(str(p) for p in (metadata_group or {}).values())
            if self._previous is not None:
                self._previous(src=src, metadata=metadata, metadata_group=metadata_group, times=times,
                               cache_hit=cache_hit, **rest)

        knobs.compilation.listener = listener
        return self

    def __exit__(self, *exc) -> None:
        if self._knobs is not None:
            self._knobs.compilation.listener = self._previous


def store(key: str, seen) -> None:
    """Remember `seen` (Recorder.seen) as the binaries of the plan `key`; atomic, errors ignored."""
    if not seen:
        return
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"triton": _version(), "files": sorted(seen)}, f)
        os.replace(tmp, path)
    except OSError:
        pass


def on_disk(key: str) -> bool:
    """Whether the kernel files remembered for the plan `key` are all still there (same Triton)."""
    try:
        entry = json.loads(_path(key).read_text())
    except (OSError, ValueError):
        return False
    files = entry.get("files")
    return entry.get("triton") == _version() and bool(files) and all(os.path.isfile(f) for f in files)
