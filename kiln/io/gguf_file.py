"""The GGUF container: header, key/value metadata and tensor index, parsed straight from the bytes.

The `gguf` package's reader builds NumPy views for every part of every field, which takes
about half a minute for a 262k-token vocabulary (Gemma's); this parser reads the same
layout (GGUF v2/v3, little-endian) in well under a second and leaves the tensor data mapped
(`tensor_data`). Errors name the file and say whether it is truncated or malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.io.errors import CheckpointError

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9
# plain GGML tensor types -> their NumPy element type (the rest are quantized blocks, read as bytes)
_PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}


class GGUFError(CheckpointError):
    """A GGUF file is truncated, corrupt, or uses an architecture or block type kiln cannot read."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int          # GGMLQuantizationType value
    dims: tuple[int, ...]   # GGUF order: fastest-varying first
    offset: int             # absolute byte offset of the data
    n_bytes: int


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    _buffer: np.ndarray     # the whole file, memory-mapped bytes

    def tensor_data(self, t: TensorInfo) -> np.ndarray:
        """The stored data as the `gguf` package presents it: plain types shaped in NumPy order, quantized
        types as uint8 rows of blocks (what `gguf.quants.dequantize` takes)."""
        raw = self._buffer[t.offset:t.offset + t.n_bytes]
        shape = tuple(reversed(t.dims))
        if t.ggml_type in _PLAIN:
            return raw.view(_PLAIN[t.ggml_type]).reshape(shape)
        from gguf import GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        return raw.reshape(quant_shape_to_byte_shape(shape, GGMLQuantizationType(t.ggml_type)))


class _Cursor:
    def __init__(self, path: Path, buf: memoryview):
        self.path, self.buf, self.pos = path, buf, 0

    def need(self, n: int, what: str) -> int:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF file: {what} at byte {self.pos} needs {n} bytes, "
                                  f"the file has {len(self.buf)}")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        return struct.unpack_from(fmt, self.buf, self.need(size, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        start = self.need(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path}: malformed GGUF file: {what} is not UTF-8") from None

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], f"the value of {key!r}")
        if vtype == _STRING:
            return self.string(f"the value of {key!r}")
        if vtype == _ARRAY:
            etype = self.scalar("<I", f"the array type of {key!r}")
            count = self.scalar("<Q", f"the array length of {key!r}")
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                start = self.need(count * dt.itemsize, f"the array {key!r}")
                return np.frombuffer(self.buf, dt, count, start).tolist()
            if etype == _STRING:
                return self.strings(count, key)
            return [self.value(etype, key) for _ in range(count)]
        raise GGUFError(f"{self.path}: malformed GGUF file: {key!r} has value type {vtype}, not a GGUF type")

    def strings(self, count: int, key: str) -> list[str]:
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        try:
            self._strings(buf, pos, end, out, count, key)
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path}: malformed GGUF file: string {len(out)} of {key!r} is not UTF-8") from None
        return out

    def _strings(self, buf, pos, end, out, count, key):
        for i in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, f"string {i} of {key!r}")
            n = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
            if pos + n > end:
                self.pos = pos
                self.need(n, f"string {i} of {key!r}")
            out.append(str(buf[pos:pos + n], "utf-8"))
            pos += n
        self.pos = pos


def parse_gguf(path: str | Path) -> GGUFFile:
    """Header, metadata and tensor index of a GGUF file; the data stays mapped, read on demand."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    p = Path(path)
    mapped = np.memmap(p, dtype=np.uint8, mode="r") if p.stat().st_size else np.zeros(0, np.uint8)
    cur = _Cursor(p, memoryview(mapped))
    head = bytes(cur.buf[:4])
    if head != MAGIC:
        raise GGUFError(f"{p}: not a GGUF file: starts with {head!r}, expected the magic {MAGIC!r}")
    cur.pos = 4
    version = cur.scalar("<I", "the version")
    if version not in (2, 3):
        raise GGUFError(f"{p}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.scalar("<Q", "the tensor count"), cur.scalar("<Q", "the metadata count")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        meta[key] = cur.value(cur.scalar("<I", f"the type of {key!r}"), key)
    infos = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.scalar("<I", f"the rank of tensor {name!r}")
        dims = tuple(cur.scalar("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        infos.append((name, dims, cur.scalar("<I", f"the type of tensor {name!r}"),
                      cur.scalar("<Q", f"the offset of tensor {name!r}")))
    align = int(meta.get("general.alignment", 32))
    start = -(-cur.pos // align) * align
    tensors, seen = [], set()
    for name, dims, gtype, offset in infos:
        if name in seen:
            raise GGUFError(f"{p}: malformed GGUF file: tensor {name!r} is listed twice")
        seen.add(name)
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
        except (ValueError, KeyError):
            raise GGUFError(f"{p}: tensor {name!r} has GGML type {gtype}, which the gguf package does not "
                                  f"know") from None
        n = int(np.prod(dims, dtype=np.int64))
        t = TensorInfo(name, gtype, dims, start + offset, n * type_size // block)
        if t.offset + t.n_bytes > len(cur.buf):
            raise GGUFError(f"{p}: truncated GGUF file: tensor '{name}' needs bytes up to "
                                  f"{t.offset + t.n_bytes}, the file has {len(cur.buf)}")
        tensors.append(t)
    return GGUFFile(p, version, meta, tensors, mapped)
