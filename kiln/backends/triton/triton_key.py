"""Triton's installation hash (`triton_key`), remembered on disk across processes.

Every Triton cache lookup is keyed by `triton_key()`: a SHA-256 of Triton's compiler sources and of
libtriton.so (~460 MB), computed once per process, ~0.3 s -- as long as the rest of a warm compile.
The files it reads change only when Triton is reinstalled, so the hash is kept in
`$KILN_CACHE_DIR/triton_key/<signature>` where the signature hashes Triton's version and the path,
size, modification time and inode of every file it reads (a superset: every .py under the
directories it walks). A changed or reinstalled file changes the signature, and the hash is
computed again. `KILN_TRITON_KEY_CACHE=0` turns this off.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import tempfile

from kiln.files import kiln_cache_root


def enabled() -> bool:
    return os.environ.get("KILN_TRITON_KEY_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _signature(cache_module) -> str:
    """A hash of the stat of every file `triton_key` reads (and of a few more)."""
    import triton

    root = os.path.dirname(os.path.dirname(os.path.abspath(cache_module.__file__)))
    ext = sysconfig.get_config_var("EXT_SUFFIX").split(".")[-1]
    files = [os.path.abspath(cache_module.__file__), os.path.join(root, "_C", f"libtriton.{ext}")]
    for sub in ("compiler", "backends", "language"):
        for d, dirs, names in os.walk(os.path.join(root, sub)):
            dirs.sort()
            files += [os.path.join(d, n) for n in sorted(names) if n.endswith(".py")]
    h = hashlib.sha256(f"triton {triton.__version__}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f} {st.st_size} {st.st_mtime_ns} {st.st_ino}\n".encode())
    return h.hexdigest()[:32]


def install() -> bool:
    """Make `triton.runtime.cache.triton_key` read the hash from disk when the installation is unchanged
    (computing and storing it otherwise). False when this Triton has no such function, or it is off."""
    if not enabled():
        return False
    try:
        import triton.runtime.cache as tc
    except ImportError:
        return False
    original = getattr(tc, "triton_key", None)
    if original is None or getattr(original, "_kiln_memo", False):
        return original is not None
    try:
        path = kiln_cache_root() / "triton_key" / _signature(tc)
    except OSError:
        return False
    memo: list[str] = []

    def triton_key() -> str:
        if not memo:
            memo.append(_read(path) or _store(path, original()))
        return memo[0]

    triton_key._kiln_memo = True
    triton_key.cache_clear = original.cache_clear if hasattr(original, "cache_clear") else lambda: None
    tc.triton_key = triton_key
    return True


def _read(path) -> str | None:
    try:
        key = path.read_text()
    except OSError:
        return None
    return key or None


def _store(path, key: str) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(key)
        os.replace(tmp, path)   # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass
    return key
