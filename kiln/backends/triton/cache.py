"""The kernel cache: generated Triton sources keyed by archetype, shapes and dtypes, kept on disk.

Why two levels: kiln generates the *source* of fused kernels (pointwise expressions); each
distinct source is written once to `<cache dir>/<archetype>/<hash>.py` and imported from
there (Triton's JIT needs a real file to read the source from). Triton itself then caches
the compiled binary of each (source, dtypes, constexpr) specialization on disk
(`TRITON_CACHE_DIR`, by default ~/.triton/cache), so a second process that compiles the same
graph loads both from disk and compiles nothing. `index.jsonl` lists what each hash holds.

The cache directory is `$KILN_CACHE_DIR/triton`, by default `~/.cache/kiln/triton`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kiln.files import kiln_cache_root

# Bump when the generators change what they emit for the same key.
GENERATOR_VERSION = 3


def default_cache_dir() -> Path:
    return kiln_cache_root() / "triton"


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    generated: int = 0
    by_archetype: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"memory_hits": self.memory_hits, "disk_hits": self.disk_hits, "generated": self.generated,
                "by_archetype": dict(self.by_archetype)}


class KernelCache:
    """Maps (archetype, key) to an imported Triton kernel, generating its source only once."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.stats = CacheStats()
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    @staticmethod
    def digest(archetype: str, key) -> str:
        blob = json.dumps([GENERATOR_VERSION, archetype, key], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def kernel(self, archetype: str, key, make_source: Callable[[], str], entry: str = "kernel"):
        """The JIT function `entry` of the generated module for `key` (any JSON-able value)."""
        h = self.digest(archetype, key)
        with self._lock:
            mod = self._loaded.get(h)
            if mod is not None:
                self.stats.memory_hits += 1
                return getattr(mod, entry)
            path = self.root / archetype / f"{archetype}_{h}.py"
            if path.exists():
                self.stats.disk_hits += 1
            else:
                self._write(path, make_source())
                self._append_index(h, archetype, key)
                self.stats.generated += 1
            self.stats.by_archetype[archetype] = self.stats.by_archetype.get(archetype, 0) + 1
            mod = self._import(path, f"kiln_gen_{archetype}_{h}")
            self._loaded[h] = mod
            return getattr(mod, entry)

    def _write(self, path: Path, source: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)  # atomic: concurrent compiles never see half a file

    def _append_index(self, h: str, archetype: str, key) -> None:
        line = json.dumps({"hash": h, "archetype": archetype, "key": key}, default=str)
        with open(self.root / "index.jsonl", "a") as f:
            f.write(line + "\n")

    @staticmethod
    def _import(path: Path, name: str):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:  # a corrupt cache file: say which, so it can be deleted
            sys.modules.pop(name, None)
            raise RuntimeError(f"kiln kernel cache: cannot load generated kernel {path}: {e}; "
                               f"delete the file to regenerate it") from e
        return mod


_DEFAULT: KernelCache | None = None


def default_cache() -> KernelCache:
    global _DEFAULT
    if _DEFAULT is None or _DEFAULT.root != default_cache_dir():
        _DEFAULT = KernelCache()
    return _DEFAULT
