"""Declarative checkpoint mapping: a table from a block tree's parameters to a checkpoint's keys.

A `Layout` maps parameter-name patterns to sources; `{i}` (and any `{name}` that
is a single letter) matches a layer number, any other `{name}` matches the rest of a name,
and the first pattern that matches wins. A source is a checkpoint key (with the
pattern's fields filled in) or an entry:

* `Concat(k1, k2, ...)`: load-time fusion (Q/K/V, gate/up) along axis 0; each part is
  shape-checked with the part sizes the block declares (`ParamSpec.parts`); a `Zeros()`
  part stands for a tensor the checkpoint does not have (Whisper's bias-free K projection).
* `Transposed(k)`: a tensor stored transposed.
* `OrMake(k, make)`: a tensor some exporters drop, rebuilt by `make(shape)` when missing.
* `Unsqueezed(k, axis)`: a tensor stored with an extra unit axis (HF V-JEPA 2's [M, 1, 1, D] mask
  tokens for a [M, 1, D] parameter), shape-checked with that axis and loaded without it.
* `Rows(k, start, stop, blocks)`: row blocks [start, stop) of a tensor stored as `blocks`
  equal blocks along axis 0 (a packed Q/K/V in-projection whose parts feed different blocks).

A `KeyTable` holds a family's layouts (e.g. HF and the original Meta layout); `detect`
picks the one whose `marker` key the checkpoint has, optionally after stripping a prefix
(`model.`), and `load` takes every parameter of a spec, checks shapes, converts to the
model dtype, checks `tied` copies and warns about checkpoint tensors left unused.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

import numpy as np

from kiln.io.errors import CheckpointError
from kiln.io.weight_map import WeightMap
from kiln.ir import as_dtype

from .module import ParamSpec


@dataclass(frozen=True)
class Zeros:
    """A concatenation part that the checkpoint does not store: zeros of the part's shape."""


@dataclass(frozen=True)
class Concat:
    """Parts concatenated along axis 0, sized by the parameter's declared `parts`; with `each="j"` the
    parts repeat for j = 0, 1, ... until they fill the parameter (e.g. every decoder layer's K and V)."""

    parts: tuple
    each: str | None = None

    def __init__(self, *parts, each: str | None = None):
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "each", each)

    def expand(self, count: int, fields: dict[str, str]) -> list:
        """The parts with fields filled in, for a parameter declaring `count` parts."""
        if self.each is None:
            return [p if isinstance(p, Zeros) else p.format(**fields) for p in self.parts]
        if count % len(self.parts):
            raise CheckpointError(f"{self} repeats {len(self.parts)} parts, which do not fill {count} parts")
        return [p if isinstance(p, Zeros) else p.format(**fields, **{self.each: j})
                for j in range(count // len(self.parts)) for p in self.parts]


@dataclass(frozen=True)
class Transposed:
    key: str
    axes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class OrMake:
    key: str
    make: Callable[[tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class Unsqueezed:
    key: str
    axis: int


@dataclass(frozen=True)
class Rows:
    key: str
    start: int
    stop: int
    blocks: int


Source = Union[str, Concat, Transposed, OrMake, Unsqueezed, Rows]


@dataclass(frozen=True)
class Layout:
    """One checkpoint layout: `keys` maps parameter patterns to sources; `ignore` lists checkpoint
    keys (fnmatch patterns) that may stay unused; `tied` maps a checkpoint key to the parameter it
    must equal when the spec does not take it (a stored copy of a tied matrix); `implies` holds the
    config fields the layout fixes (e.g. the original Llama layout's interleaved RoPE)."""

    name: str
    marker: str
    keys: Mapping[str, Source]
    strip: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    tied: Mapping[str, str] = field(default_factory=dict)
    implies: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "_patterns", [(_regex(p), s) for p, s in self.keys.items()])

    def source(self, param: str) -> tuple[Source | None, dict[str, str]]:
        for rx, src in self._patterns:
            m = rx.fullmatch(param)
            if m:
                return src, m.groupdict()
        return None, {}


def _regex(pattern: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        field_ = m.group(1)
        out.append(f"(?P<{field_}>\\d+)" if len(field_) == 1 else f"(?P<{field_}>.+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


class KeyTable:
    def __init__(self, family: str, *layouts: Layout):
        self.family, self.layouts = family, layouts

    def detect(self, weights: WeightMap) -> tuple[Layout, WeightMap]:
        """The layout whose marker the checkpoint has, and a view with its prefix stripped."""
        for layout in self.layouts:
            if weights.has(layout.marker):
                return layout, weights
            for prefix in layout.strip:
                if weights.has(prefix + layout.marker):
                    return layout, weights.strip_prefix(prefix)
        expected = " or ".join(f"{(lay.strip[0] if lay.strip else '') + lay.marker!r} ({lay.name})"
                               for lay in self.layouts)
        raise CheckpointError(f"{weights.source}: not a {self.family} checkpoint: expected {expected}; "
                              f"found keys such as {weights.keys()[:5]}")

    def load(self, weights: WeightMap, spec: Mapping[str, ParamSpec], layers: Iterable[int] | None = None,
             ) -> dict[str, np.ndarray]:
        """Every parameter of `spec` from the checkpoint, in the spec's dtypes.

        `layers` (optional) orders and limits the per-layer parameters (those whose pattern has
        `{i}`), e.g. a range wrapped in a progress bar; the others are always loaded first."""
        layout, w = self.detect(weights)
        plan = {}
        for name, ps in spec.items():
            src, fields = layout.source(name)
            if src is None:
                raise CheckpointError(f"{weights.source}: the {layout.name} layout of {self.family} checkpoints "
                                      f"has no tensor for parameter {name!r}")
            plan[name] = (src, fields, ps)
        by_layer: dict[int, list[str]] = {}
        out = {}
        for name, (src, fields, ps) in plan.items():
            if "i" in fields and layers is not None:
                by_layer.setdefault(int(fields["i"]), []).append(name)
            else:
                out[name] = _take(w, src, fields, ps)
        for i in layers if layers is not None else ():
            for name in by_layer.get(i, ()):
                out[name] = _take(w, *plan[name])
        for key, param in layout.tied.items():
            if w.has(key) and key in w.unused() and param in out:
                stored = w.take(key, shape=out[param].shape, dtype=out[param].dtype)
                if not np.array_equal(stored, out[param]):
                    raise CheckpointError(f"{weights.source}: '{key}' is a stored copy of the tied '{param}' "
                                          f"but differs from it")
        w.warn_unused(ignore=[k for k in w.unused() if any(fnmatch.fnmatchcase(k, p) for p in layout.ignore)])
        return out


def _fill(key: str, fields: dict[str, str]) -> str:
    return key.format(**fields)


def _take(w: WeightMap, src: Source, fields: dict[str, str], ps: ParamSpec) -> np.ndarray:
    dt = as_dtype(ps.dtype).np_dtype
    if isinstance(src, str):
        return w.take(_fill(src, fields), shape=ps.shape, dtype=dt)
    if isinstance(src, Transposed):
        return w.take_transposed(_fill(src.key, fields), shape=ps.shape, dtype=dt, axes=src.axes)
    if isinstance(src, OrMake):
        key = _fill(src.key, fields)
        if w.has(key):
            return w.take(key, shape=ps.shape, dtype=dt)
        made = np.asarray(src.make(ps.shape))
        if made.shape != ps.shape:
            raise CheckpointError(f"{w.source}: '{key}' is missing and its fallback made shape {made.shape}, "
                                  f"expected {ps.shape}")
        return made.astype(dt)
    if isinstance(src, Unsqueezed):
        stored = ps.shape[:src.axis] + (1,) + ps.shape[src.axis:]
        return w.take(_fill(src.key, fields), shape=stored, dtype=dt).reshape(ps.shape)
    if isinstance(src, Rows):
        key = _fill(src.key, fields)
        block = ps.shape[0] // (src.stop - src.start)
        stored = w.take(key, shape=(block * src.blocks,) + ps.shape[1:], dtype=dt)
        return np.ascontiguousarray(stored[src.start * block:src.stop * block])
    if isinstance(src, Concat):
        if ps.parts is None:
            raise CheckpointError(f"{w.source}: {src} fuses tensors into a parameter of shape {ps.shape} that "
                                  f"declares no parts (ParamSpec.parts)")
        names = src.expand(len(ps.parts), fields)
        if len(names) != len(ps.parts):
            raise CheckpointError(f"{w.source}: {src} has {len(names)} tensors for a parameter of "
                                  f"{len(ps.parts)} parts {ps.parts}")
        parts = []
        for part, size in zip(names, ps.parts):
            shape = (size,) + ps.shape[1:]
            parts.append(np.zeros(shape, dt) if isinstance(part, Zeros) else w.take(part, shape=shape, dtype=dt))
        return np.concatenate(parts, axis=0)
    raise TypeError(f"unknown checkpoint source {src!r}")
