"""Reading and writing safetensors files as NumPy arrays.

Why our own reader: the ``safetensors`` library's NumPy loader cannot return
bfloat16, and most LLM checkpoints are bfloat16. The format is simple (an
8-byte little-endian header length, a JSON header, then one flat data
buffer), so we parse the header ourselves, validate it fully, and hand out
zero-copy, read-only views into a memory map of the file. Nothing is read
into RAM until a tensor's pages are touched, so a 10 GB checkpoint "loads"
instantly and only the weights a model actually uses are paged in.

Arrays returned by :func:`load_safetensors` are read-only (the file is mapped
read-only); copy one (``np.array(a)``) before modifying it.

Supported dtypes: F64 F32 F16 BF16 (as ``ml_dtypes.bfloat16``) F8_E4M3 F8_E5M2
I64 I32 I16 I8 U64 U32 U16 U8 BOOL.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from kiln.errors import KilnTypeError
from kiln.io.errors import CheckpointError
from kiln.files import open_regular, read_json_file, reject_duplicate_keys

__all__ = [
    "SAFETENSORS_DTYPES",
    "TensorInfo",
    "read_safetensors_header",
    "load_safetensors",
    "load_checkpoint_dir",
    "save_safetensors",
]

# safetensors dtype tag -> NumPy dtype (all little-endian, as the format requires).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
_TAG_OF_DTYPE: dict[np.dtype, str] = {dt: tag for tag, dt in SAFETENSORS_DTYPES.items()}

# The safetensors spec caps the header at 100 MB; a larger length means corruption,
# and refusing it keeps a bad length from triggering a huge allocation.
_MAX_HEADER_BYTES = 100_000_000
# NumPy's limit on one array (zero-size ones included: the non-zero dimensions still count); the
# library's own limit (a product overflowing 64 bits) is implied by it.
_MAX_ARRAY_BYTES = 2**63 - 1


class TensorInfo:
    """One header entry: where a tensor lives in the data buffer and how to view it."""

    __slots__ = ("name", "tag", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, tag: str, dtype: np.dtype, shape: tuple[int, ...], begin: int, end: int):
        self.name, self.tag, self.dtype, self.shape, self.begin, self.end = name, tag, dtype, shape, begin, end

    def __repr__(self) -> str:
        return f"TensorInfo({self.name!r}, {self.tag}, shape={self.shape}, offsets=[{self.begin}, {self.end}])"


def _is_nonneg_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a safetensors header without mapping the data.

    Returns ``(tensors, metadata, data_start)`` where ``data_start`` is the file
    offset of the data buffer. Raises :class:`CheckpointError` naming the file
    and the offending tensor for any inconsistency.
    """
    path = Path(path)
    with open_regular(path, "safetensors file", CheckpointError) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(
                f"{path}: truncated safetensors file: {size} bytes, "
                "expected at least the 8-byte header length prefix"
            )
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise CheckpointError(
                f"{path}: header length {n} bytes exceeds the file size ({size} bytes, "
                f"so at most {size - 8} header bytes); the file is truncated or not safetensors"
            )
        if n > _MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} bytes exceeds the 100 MB safetensors limit")
        raw = f.read(n)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys(CheckpointError, f"{path}: header:"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header ({n} bytes) is not valid UTF-8 JSON: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: header ({n} bytes) is JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header must be a JSON object, found {type(header).__name__}")

    data_start = 8 + n
    data_size = size - data_start
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata  # null is "no metadata"; [] or "" are not (as the library)
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{path}: '__metadata__' must be a JSON object of string to string")

    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"{path}: tensor '{name}'"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: header entry must be an object with dtype/shape/data_offsets")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise CheckpointError(f"{where}: header entry lacks {missing}; found keys {sorted(entry)}")
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(tag, str) or tag not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{where}: unknown dtype {tag!r}; expected one of {sorted(SAFETENSORS_DTYPES)}"
            )
        if not isinstance(shape, list) or not all(_is_nonneg_int(d) for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, found {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_nonneg_int(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CheckpointError(
                f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, found {offsets!r}"
            )
        dtype = SAFETENSORS_DTYPES[tag]
        if math.prod(d for d in shape if d) * dtype.itemsize > _MAX_ARRAY_BYTES:
            raise CheckpointError(
                f"{where}: shape {shape!r} ({tag}) is too large to represent: more than 2**63 - 1 bytes"
            )
        begin, end = offsets
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes, expected "
                f"{expected} = prod(shape {tuple(shape)}) * {dtype.itemsize} bytes ({tag})"
            )
        if end > data_size:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] run past the end of the data buffer "
                f"({data_size} bytes); the file is truncated or the header is corrupt"
            )
        infos[name] = TensorInfo(name, tag, dtype, tuple(shape), begin, end)

    # As the safetensors library requires: sorted by offsets, the tensors tile the data buffer exactly,
    # with no overlap (two names reading the same bytes), no hole and no trailing bytes (so a file
    # cannot be valid in two formats at once, and every byte of it is accounted for).
    expected, prev = 0, None
    for info in sorted(infos.values(), key=lambda i: (i.begin, i.end, i.name)):
        if info.begin < expected:
            raise CheckpointError(
                f"{path}: tensors '{prev.name}' [{prev.begin}, {prev.end}] and '{info.name}' "
                f"[{info.begin}, {info.end}] overlap in the data buffer"
            )
        if info.begin > expected:
            after = f"after tensor '{prev.name}' " if prev is not None else "at the start of the data buffer "
            raise CheckpointError(
                f"{path}: hole of {info.begin - expected} bytes [{expected}, {info.begin}] in the data buffer "
                f"{after}before tensor '{info.name}' [{info.begin}, {info.end}]; safetensors requires the "
                "tensors to cover the data buffer contiguously"
            )
        expected, prev = info.end, info
    if expected != data_size:
        raise CheckpointError(
            f"{path}: {data_size - expected} trailing bytes after the last tensor: the tensors cover "
            f"[0, {expected}] of a {data_size}-byte data buffer; safetensors requires the tensors to cover "
            "it exactly"
        )
    return infos, metadata, data_start


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map a safetensors file and return ``{name: read-only array view}``.

    Zero-copy: every array is a view into one read-only ``mmap`` of the file,
    which stays open as long as any of the arrays is alive.
    """
    path = Path(path)
    infos, _, data_start = read_safetensors_header(path)
    out: dict[str, np.ndarray] = {}
    mm = None
    for name, info in infos.items():
        count = math.prod(info.shape)
        if count == 0:
            arr = np.zeros(info.shape, dtype=info.dtype)
            arr.flags.writeable = False
        else:
            if mm is None:
                with open_regular(path, "safetensors file", CheckpointError) as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                if len(mm) < data_start + max(i.end for i in infos.values()):
                    # The file shrank between reading the header and mapping it.
                    raise CheckpointError(f"{path}: file changed size while being loaded")
            arr = np.frombuffer(mm, dtype=info.dtype, count=count, offset=data_start + info.begin)
            arr = arr.reshape(info.shape)
        out[name] = arr
    return out


def _safe_child(directory: Path, name: Any, index_path: Path) -> Path:
    """Resolve a shard file name from an index, refusing paths that escape the directory."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise CheckpointError(f"{index_path}: shard file name {name!r} must be a relative file name inside {directory}")
    return directory / name


def load_checkpoint_dir(directory: str | os.PathLike, filename: str = "model.safetensors") -> dict[str, np.ndarray]:
    """Load every tensor of a HF-style checkpoint directory.

    Looks for ``<filename>`` (a single file), else ``<filename>.index.json``
    (sharded: ``{"weight_map": {tensor: shard_file}}``). Each shard is
    memory-mapped; the index is checked against the shards (every listed
    tensor must be in its shard, no tensor may appear in two shards).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist or is not a directory")
    single = directory / filename
    index_path = directory / (filename + ".index.json")
    if os.path.lexists(single):
        return load_safetensors(single)
    if not os.path.lexists(index_path):
        present = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        hint = ""
        if any(not p.endswith(".safetensors") for p in present):
            hint = " (PyTorch pickle checkpoints are not supported; convert them to safetensors)"
        raise CheckpointError(
            f"{directory}: no checkpoint found; expected '{filename}' or '{index_path.name}'. "
            f"Weight files present: {present or 'none'}{hint}"
        )

    index = read_json_file(index_path, "checkpoint index", CheckpointError, expect=None,
                           unique_keys=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: expected a non-empty 'weight_map' object of tensor name -> shard file")

    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        _safe_child(directory, shard, index_path)
        by_shard.setdefault(shard, []).append(name)
    for shard, names in by_shard.items():
        if not os.path.lexists(directory / shard):
            raise CheckpointError(
                f"{index_path}: shard '{shard}' (holding {len(names)} tensors, e.g. '{names[0]}') "
                f"is missing from {directory}"
            )

    out: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for shard, names in by_shard.items():
        tensors = load_safetensors(directory / shard)
        absent = [n for n in names if n not in tensors]
        if absent:
            raise CheckpointError(
                f"{index_path}: index places {len(absent)} tensors in shard '{shard}' but the shard lacks them, "
                f"e.g. {absent[:5]}"
            )
        for name, arr in tensors.items():
            if name in out:
                raise CheckpointError(
                    f"{directory}: tensor '{name}' appears in both shard '{where[name]}' and shard '{shard}'"
                )
            out[name] = arr
            where[name] = shard
    return out


def _prepare(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate names and dtypes; return C-contiguous little-endian arrays (values unchanged)."""
    if not isinstance(tensors, Mapping):
        raise KilnTypeError(f"tensors must be a mapping of name -> np.ndarray, found {type(tensors).__name__}")
    out = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"tensor name {name!r} is not allowed (must be a string other than '__metadata__')")
        if not isinstance(arr, np.ndarray):
            raise KilnTypeError(f"tensor '{name}': expected np.ndarray, found {type(arr).__name__}")
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dt not in _TAG_OF_DTYPE:
            raise CheckpointError(
                f"tensor '{name}': dtype {arr.dtype} cannot be stored in safetensors; "
                f"supported: {sorted(str(d) for d in _TAG_OF_DTYPE)}"
            )
        arr = arr.astype(dt, copy=False)  # byte order only, never the value type
        # (not np.ascontiguousarray: it turns a 0-d array into shape (1,))
        out[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    return out


def _write_by_hand(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> None:
    """Write the safetensors format directly (for library versions that lack a dtype, e.g. old bf16 support).

    Tensors are laid out by descending itemsize so every tensor starts aligned,
    and the header is space-padded to a multiple of 8 bytes, as the library does.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        a = tensors[name]
        header[name] = {
            "dtype": _TAG_OF_DTYPE[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            a = tensors[name]
            if a.size:
                f.write(a.reshape(-1).view(np.uint8).data)


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a file's (or a directory entry's) data to stable storage."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms (Windows) cannot open a directory; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` in safetensors format, atomically and durably.

    Uses the ``safetensors`` library when it handles every dtype, else writes the
    format by hand. The file is written to a temporary name in the same
    directory, fsynced, renamed over ``path`` (``os.replace``, atomic), and the
    directory is fsynced, so a crash or kill at any point leaves either the old
    file or the complete new one under ``path``, never a partial one, and a
    completed save survives a power loss.
    """
    path = Path(path)
    prepared = _prepare(tensors)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{path}: metadata must map strings to strings")
    meta = dict(metadata) if metadata else None
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not mkstemp) so the file gets the usual umask permissions.
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    try:
        try:
            from safetensors.numpy import save_file

            save_file(prepared, tmp, metadata=meta)
        except Exception:  # this library version lacks a dtype (e.g. bfloat16): write the format ourselves
            _write_by_hand(Path(tmp), prepared, meta)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent, directory=True)
