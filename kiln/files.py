"""Opening input files safely: regular files only, errors that name the file.

A leaf module like :mod:`kiln.errors` (stdlib and ``kiln.errors`` only), so every
layer can use it: ``kiln.io`` loaders, ``kiln.ir``'s graph JSON, the runtime's
``generation_config.json`` and the model families' side files.

A loader that opens whatever sits at a path can hang forever (a named pipe
blocks ``open`` until a writer appears), read a device without end, or die
with a bare ``IsADirectoryError``/``JSONDecodeError``. Everything in kiln that
reads a file from a checkpoint directory goes through :func:`open_regular`
(directly or via :func:`read_text_file` / :func:`read_json_file`):

* the file is opened with ``O_NONBLOCK`` (so a FIFO cannot block the open) and
  checked with ``fstat`` on the open descriptor (so there is no window between
  the check and the read): anything but a regular file is refused;
* symbolic links are followed (the HF cache links snapshots to blobs);
* every failure is raised as the caller's error class (a
  :class:`~kiln.errors.CheckpointError` subclass by default) with the path and
  what was expected.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from kiln.errors import CheckpointError, ConfigError

__all__ = ["kiln_cache_root", "open_regular", "is_regular_file", "read_text_file", "read_json_file", "read_json_if_present",
           "reject_duplicate_keys", "MAX_SIDE_FILE_BYTES"]

#: Largest JSON/text side file read into memory (config.json, index, chat template ...).
MAX_SIDE_FILE_BYTES = 100_000_000

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def kiln_cache_root() -> Path:
    """Where kiln keeps what it can rebuild (compiled plans, generated kernels): $KILN_CACHE_DIR,
    by default ~/.cache/kiln."""
    root = os.environ.get("KILN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kiln")
    return Path(root)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "named pipe (FIFO)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def is_regular_file(path: str | os.PathLike) -> bool:
    """True if ``path`` exists and is (a symlink to) a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike, what: str = "file", error: type[Exception] = CheckpointError) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file, else raise ``error`` naming it.

    ``what`` describes the file in messages ("config file", "safetensors file").
    Never blocks on a named pipe.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: expected a {what}, found a directory") from None
    except PermissionError:
        raise error(f"{path}: cannot read {what}: permission denied") from None
    except (OSError, ValueError) as e:  # ENXIO (a socket), ELOOP, ENAMETOOLONG, an embedded NUL ...
        raise error(f"{path}: cannot open {what}: {getattr(e, 'strerror', None) or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: expected a regular {what}, found a {_kind(mode)}")
        if _O_NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_bytes(path: Path, what: str, error: type[Exception], max_bytes: int) -> bytes:
    with open_regular(path, what, error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is larger than {max_bytes} bytes; refusing to read it into memory")
    return data


def read_text_file(path: str | os.PathLike, what: str = "file", error: type[Exception] = CheckpointError,
                   max_bytes: int = MAX_SIDE_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file; any failure is ``error`` naming the file."""
    path = Path(path)
    data = _read_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not valid UTF-8: {e}") from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", error: type[Exception] = ConfigError, *,
                   expect: type | tuple[type, ...] | None = dict, max_bytes: int = MAX_SIDE_FILE_BYTES,
                   unique_keys: bool = False) -> Any:
    """The parsed JSON of a regular file.

    ``expect`` (default ``dict``) is the required type of the top-level value
    (``None``: any). Every failure (missing, not a regular file, not UTF-8,
    invalid JSON, wrong top-level type, nesting too deep) is ``error`` naming
    the file, with the line and column of a syntax error. ``unique_keys=True``
    also refuses an object with the same key twice (JSON itself lets the last
    one win silently).
    """
    path = Path(path)
    text = read_text_file(path, what, error, max_bytes)
    try:
        hook = reject_duplicate_keys(error, f"{path}:") if unique_keys else None
        value = json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    if expect is not None and not isinstance(value, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        kind = {"dict": "a JSON object", "list": "a JSON array"}.get(names, names)
        raise error(f"{path}: expected {kind} at top level, found {type(value).__name__}")
    return value


def reject_duplicate_keys(error: type[Exception], where: str):
    """A ``json.loads`` ``object_pairs_hook`` raising ``error`` (prefixed by ``where``) on a repeated key."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise error(f"{where} the key {k!r} appears twice in one JSON object; a duplicate key is ambiguous")
            out[k] = v
        return out

    return hook


def read_json_if_present(path: str | os.PathLike, what: str = "JSON file", error: type[Exception] = ConfigError, *,
                         expect: type | tuple[type, ...] | None = dict) -> Any:
    """:func:`read_json_file`, or ``None`` when nothing exists at ``path``.

    For optional side files (sentence-transformers' ``1_Pooling/config.json``,
    ``modules.json``, ``generation_config.json`` ...): absent is fine, but
    something that exists and is not a readable regular JSON file is an error,
    never a hang.
    """
    if not os.path.lexists(path):
        return None
    return read_json_file(path, what, error, expect=expect)
