"""``WeightMap``: checked, tracked access to a checkpoint's tensors.

Model builders pull weights out of a checkpoint by name. Doing that through a
plain dict hides three classes of bugs: a wrong shape that broadcasts
silently, a key renamed between checkpoint layouts (HF ``q_proj`` vs the
original ``wq``), and weights that were never loaded at all. ``WeightMap``
checks shapes at the moment of taking, reports near-miss names for a missing
key, supports aliases, transposes and load-time fusion (QKV, gate/up), and
records which keys were used so that leftovers can be reported.

dtype conversion happens only when a caller passes ``dtype=``; a tensor is
never cast behind the caller's back, and never across dtype classes: asking
for a float dtype from an integer or bool tensor (or the reverse) is a
``CheckpointError`` naming the tensor, as is narrowing integers that do not fit.

Every floating-point tensor taken is checked for NaN/Inf (after conversion, so
an overflow to Inf in a narrower dtype is caught too). The policy is the
``nonfinite`` argument: ``"error"`` (the default) raises ``CheckpointError``
naming the tensor, ``"warn"`` warns and returns the tensor, ``"allow"`` skips
the check. The environment variable ``KILN_NONFINITE_WEIGHTS`` sets the
default for maps built without the argument (e.g. inside ``kiln.load``).
"""

from __future__ import annotations

import difflib
import os
import warnings
from typing import Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

from kiln.io.errors import CheckpointError

__all__ = ["WeightMap", "NONFINITE_POLICIES"]

#: Accepted values of ``WeightMap(nonfinite=...)`` and of ``$KILN_NONFINITE_WEIGHTS``.
NONFINITE_POLICIES = ("error", "warn", "allow")
_NONFINITE_ENV = "KILN_NONFINITE_WEIGHTS"

Shape = Sequence[int | None]


def _fmt_shape(shape: Iterable[int | None]) -> str:
    """Shape as Python writes a tuple, with ``*`` for a wildcard axis."""
    dims = ["*" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _shape_matches(found: tuple[int, ...], expected: Shape) -> bool:
    expected = tuple(expected)
    return len(found) == len(expected) and all(e is None or e == f for f, e in zip(found, expected))


class WeightMap:
    """Named tensors from one checkpoint, with shape checks and use tracking.

    ``source`` names where the tensors came from (a path or model id); it is
    included in every error and warning. In ``shape`` arguments, ``None``
    matches any size along that axis.
    """

    def __init__(self, tensors: dict[str, np.ndarray], source: str, *, nonfinite: str | None = None):
        self._tensors = dict(tensors)
        self.source = str(source)
        self.nonfinite = _nonfinite_policy(nonfinite)
        self._used: set[str] = set()
        self._parent: WeightMap | None = None
        self._parent_key: dict[str, str] = {}

    # ---- inspection -------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def has(self, key: str) -> bool:
        """True if ``key`` exists (does not mark it used)."""
        return key in self._tensors

    def has_prefix(self, prefix: str) -> bool:
        """True if any key starts with ``prefix``."""
        return any(k.startswith(prefix) for k in self._tensors)

    def shape_of(self, key: str) -> tuple[int, ...]:
        """The stored shape of ``key`` (does not mark it used)."""
        return tuple(self._get(key).shape)

    def __repr__(self) -> str:
        return f"WeightMap({len(self)} tensors from {self.source!r}, {len(self._used)} used)"

    # ---- taking -----------------------------------------------------------
    def take(self, key: str, shape: Shape | None = None, dtype=None) -> np.ndarray:
        """Return tensor ``key`` and mark it used.

        ``shape`` (optional) is checked exactly; ``dtype`` (optional) converts
        explicitly with ``astype``. Without ``dtype`` the stored dtype is kept.
        """
        arr = self._get(key)
        if shape is not None:
            self._check_shape(key, arr.shape, shape)
        self._mark(key)
        return self._convert(key, arr, dtype)

    def take_transposed(
        self, key: str, shape: Shape | None = None, dtype=None, axes: Sequence[int] | None = None
    ) -> np.ndarray:
        """Return ``key`` transposed (``axes``, default reversed) as a contiguous array.

        ``shape`` is the expected shape *after* transposing, e.g. a HF Linear
        weight stored ``[out, in]`` taken as ``[in, out]``.
        """
        arr = self._get(key)
        out_shape = tuple(arr.shape[a] for a in axes) if axes is not None else tuple(reversed(arr.shape))
        if shape is not None and not _shape_matches(out_shape, shape):
            raise CheckpointError(
                f"{self.source}: tensor '{key}' has shape {_fmt_shape(arr.shape)}, transposed "
                f"{_fmt_shape(out_shape)}; expected {_fmt_shape(shape)} after transposing"
            )
        self._mark(key)
        return self._convert(key, np.transpose(arr, axes).copy(order="C"), dtype)

    def take_first(self, *aliases: str, shape: Shape | None = None, dtype=None) -> np.ndarray:
        """Take the first alias that exists, for checkpoints that name one weight differently.

        E.g. ``take_first("model.layers.0.self_attn.q_proj.weight", "layers.0.attention.wq.weight")``.
        Only the alias taken is marked used.
        """
        if not aliases:
            raise TypeError("take_first needs at least one key")
        for key in aliases:
            if key in self._tensors:
                return self.take(key, shape=shape, dtype=dtype)
        raise CheckpointError(
            f"{self.source}: none of the keys {list(aliases)} exist" + self._near_misses(*aliases)
        )

    def take_concat(self, keys: Sequence[str], axis: int = 0, shape: Shape | None = None, dtype=None) -> np.ndarray:
        """Concatenate several tensors along ``axis`` (load-time fusion of Q/K/V or gate/up).

        All parts must share a dtype unless ``dtype`` is given; ``shape`` checks the result.
        """
        if not keys:
            raise TypeError("take_concat needs at least one key")
        parts = [self._get(k) for k in keys]
        if dtype is None:
            dtypes = {p.dtype for p in parts}
            if len(dtypes) > 1:
                found = ", ".join(f"'{k}': {p.dtype}" for k, p in zip(keys, parts))
                raise CheckpointError(
                    f"{self.source}: cannot concatenate tensors of different dtypes ({found}); "
                    "pass dtype= to convert explicitly"
                )
        ndims = {p.ndim for p in parts}
        ax = axis if axis >= 0 else axis + parts[0].ndim
        if len(ndims) > 1 or not 0 <= ax < parts[0].ndim or len(
            {tuple(d for i, d in enumerate(p.shape) if i != ax) for p in parts}
        ) > 1:
            found = ", ".join(f"'{k}': {_fmt_shape(p.shape)}" for k, p in zip(keys, parts))
            raise CheckpointError(
                f"{self.source}: cannot concatenate along axis {axis}: shapes must agree on all other axes; found {found}"
            )
        out_shape = list(parts[0].shape)
        out_shape[ax] = sum(p.shape[ax] for p in parts)
        if shape is not None and not _shape_matches(tuple(out_shape), shape):
            found = ", ".join(f"'{k}': {_fmt_shape(p.shape)}" for k, p in zip(keys, parts))
            raise CheckpointError(
                f"{self.source}: concatenation along axis {axis} of {found} has shape "
                f"{_fmt_shape(out_shape)}, expected {_fmt_shape(shape)}"
            )
        parts = [self._convert(k, p, dtype) for k, p in zip(keys, parts)]
        out = np.concatenate(parts, axis=ax)
        for k in keys:
            self._mark(k)
        return out

    # ---- key layout -------------------------------------------------------
    def strip_prefix(self, prefix: str) -> "WeightMap":
        """A view with ``prefix`` removed from the keys that have it (others keep their names).

        Useful to unify ``model.layers...`` (HF ``*ForCausalLM``) and ``layers...``
        (base model) layouts. Taking from the view marks the original key used
        in this map too. A renamed key colliding with an existing one is an error.
        """
        renamed: dict[str, str] = {}
        for k in self._tensors:
            new = k[len(prefix):] if prefix and k.startswith(prefix) else k
            if new in renamed:
                raise CheckpointError(
                    f"{self.source}: stripping prefix '{prefix}' maps both '{renamed[new]}' and '{k}' to '{new}'"
                )
            renamed[new] = k
        child = WeightMap({new: self._tensors[old] for new, old in renamed.items()}, self.source,
                          nonfinite=self.nonfinite)
        child._parent = self
        child._parent_key = renamed
        child._used = {new for new, old in renamed.items() if old in self._used}
        return child

    # ---- bookkeeping ------------------------------------------------------
    def unused(self) -> list[str]:
        """Keys never taken, sorted."""
        return sorted(k for k in self._tensors if k not in self._used)

    def warn_unused(self, ignore: Iterable[str] = ()) -> list[str]:
        """``warnings.warn`` listing unused keys (minus ``ignore``) and return them.

        ``ignore`` holds key names expected to be unused (e.g. rotary caches).
        """
        ignore = set(ignore)
        left = [k for k in self.unused() if k not in ignore]
        if left:
            shown = ", ".join(left[:20]) + (f", ... and {len(left) - 20} more" if len(left) > 20 else "")
            warnings.warn(f"{self.source}: {len(left)} checkpoint tensors were not used: {shown}", stacklevel=2)
        return left

    def mark_used(self, *keys: str) -> None:
        """Mark keys as deliberately ignored, so they are not reported as unused."""
        for k in keys:
            self._get(k)
            self._mark(k)

    # ---- internals --------------------------------------------------------
    def _mark(self, key: str) -> None:
        self._used.add(key)
        if self._parent is not None:
            self._parent._mark(self._parent_key[key])

    def _get(self, key: str) -> np.ndarray:
        try:
            return self._tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.source}: missing tensor '{key}'" + self._near_misses(key)) from None

    def _near_misses(self, *keys: str) -> str:
        names = list(self._tensors)
        close: list[str] = []
        for key in keys:
            for c in difflib.get_close_matches(key, names, n=5, cutoff=0.6):
                if c not in close:
                    close.append(c)
        if close:
            return f"; similar keys: {close[:5]} ({len(names)} tensors in checkpoint)"
        return f"; no similar keys among {len(names)} tensors, e.g. {names[:5]}"

    def _check_shape(self, key: str, found: tuple[int, ...], expected: Shape) -> None:
        if not _shape_matches(tuple(found), expected):
            raise CheckpointError(
                f"{self.source}: tensor '{key}' has shape {_fmt_shape(found)}, expected {_fmt_shape(expected)}"
            )

    def _checkpoint_key(self, key: str) -> str:
        """The tensor's name in the checkpoint file (through prefix-stripped views), for messages."""
        m = self
        while m._parent is not None:
            key, m = m._parent_key[key], m._parent
        return key

    def _convert(self, key: str, arr: np.ndarray, dtype) -> np.ndarray:
        """``arr`` as ``dtype`` (None: as stored), refusing cross-class casts, then the non-finite check."""
        key = self._checkpoint_key(key)
        if dtype is None:
            out = arr
        else:
            try:
                target = np.dtype(dtype)
            except TypeError:
                raise CheckpointError(f"{self.source}: tensor '{key}': unknown target dtype {dtype!r}") from None
            found, wanted = _dtype_class(arr.dtype), _dtype_class(target)
            if found != wanted:
                raise CheckpointError(
                    f"{self.source}: tensor '{key}' is stored as {arr.dtype} ({found}), expected {_ARTICLE[wanted]} {wanted} "
                    f"tensor ({target}); kiln does not cast across dtype classes"
                )
            if wanted == "integer" and arr.size and not np.can_cast(arr.dtype, target):
                lo, hi, info = int(arr.min()), int(arr.max()), np.iinfo(target)
                if lo < info.min or hi > info.max:
                    raise CheckpointError(
                        f"{self.source}: tensor '{key}' ({arr.dtype}) holds values in [{lo}, {hi}], "
                        f"outside the range of {target}"
                    )
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow to Inf is reported just below
                out = arr if arr.dtype == target else arr.astype(target)
        if self.nonfinite != "allow" and _dtype_class(out.dtype) == "float":
            self._check_finite(key, arr, out)
        return out

    def _check_finite(self, key: str, stored: np.ndarray, out: np.ndarray) -> None:
        bad = _count_nonfinite(out)
        if not bad:
            return
        n, first = bad
        idx = tuple(int(i) for i in np.unravel_index(first, out.shape)) if out.ndim else ()
        what = (f"after conversion from {stored.dtype} to {out.dtype} (the stored values overflow it)"
                if stored is not out and _dtype_class(stored.dtype) == "float" and not _count_nonfinite(stored)
                else "")
        msg = (f"{self.source}: tensor '{key}' ({out.dtype}, shape {_fmt_shape(out.shape)}) holds {n} non-finite "
               f"values (NaN/Inf){' ' + what if what else ''}, first at index {idx}; pass nonfinite='allow' "
               f"(or set {_NONFINITE_ENV}=allow) to load it anyway")
        if self.nonfinite == "warn":
            warnings.warn(msg, stacklevel=4)
        else:
            raise CheckpointError(msg)


def _nonfinite_policy(value: str | None) -> str:
    where = "nonfinite"
    if value is None:
        value, where = os.environ.get(_NONFINITE_ENV) or "error", f"${_NONFINITE_ENV}"
    if value not in NONFINITE_POLICIES:
        raise CheckpointError(f"{where} must be one of {list(NONFINITE_POLICIES)}, found {value!r}")
    return value


_ML_FLOATS = {np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)}


def _dtype_class(dt: np.dtype) -> str:
    """'float', 'integer', 'bool' or 'other' (complex, strings, ...): casts never cross a class."""
    if dt in _ML_FLOATS or dt.kind == "f":
        return "float"
    if dt.kind in "iu":
        return "integer"
    return "bool" if dt.kind == "b" else "other"


_ARTICLE = {"float": "a", "integer": "an", "bool": "a", "other": "an"}
_CHUNK = 1 << 22  # elements per isfinite pass: bounds the temporary to a few MB however large the tensor


def _count_nonfinite(arr: np.ndarray) -> tuple[int, int] | None:
    """None if every value is finite, else (count, flat index of the first non-finite value)."""
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        ok = np.isfinite(flat[start:start + _CHUNK])
        if not ok.all():
            bad = ~np.isfinite(flat[start:])
            return int(bad.sum()), start + int(np.argmax(bad))
    return None
