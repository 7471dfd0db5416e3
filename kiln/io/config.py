"""Reading a model's ``config.json``.

Only the raw JSON is read here; family-specific typed config dataclasses live
in ``kiln.models``. The value of this module is in its errors (which file,
which field, which names were tried) and in ``config_get``, which covers the
many aliases HF families use for the same hyperparameter
(``num_key_value_heads`` / ``n_kv_heads`` / ``multi_query_group_num`` ...).

Family parsers read every field through the validated accessors
(:func:`config_int`, :func:`config_float`, :func:`config_bool`,
:func:`config_str`, :func:`check_divisible`): each checks the JSON type and the
range and raises :class:`ConfigError` naming the field and the file, so a
zero, negative, fractional or string size never reaches integer arithmetic.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from kiln.io.errors import ConfigError
from kiln.files import read_json_file

__all__ = ["ModelConfig", "read_config", "config_get", "config_int", "config_float", "config_bool", "config_str",
           "check_divisible"]

_MISSING: Any = object()


class ModelConfig(dict):
    """The parsed config.json: a plain dict that also remembers its file (``.path``) for error messages."""

    path: str = "config"


def read_config(path: str | os.PathLike, filename: str = "config.json") -> ModelConfig:
    """Read ``<dir>/config.json`` (or the JSON file ``path`` itself) as a dict.

    Only a regular file is opened (a named pipe is refused, never waited on);
    every failure is a :class:`ConfigError` naming the file.
    """
    path = Path(path)
    file = path / filename if path.is_dir() else path
    if not os.path.lexists(file):
        raise ConfigError(f"{file}: config file not found (expected a HF '{filename}')")
    cfg = read_json_file(file, "config file", ConfigError)
    out = ModelConfig(cfg)
    out.path = str(file)
    return out


def config_get(cfg: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """The value of the first of ``names`` present in ``cfg`` with a non-null value.

    A JSON ``null`` counts as absent (HF writes ``null`` for "use the default").
    Without ``default``, a missing field raises :class:`ConfigError` naming
    every alias tried and the config file.
    """
    if not names:
        raise TypeError("config_get needs at least one field name")
    name, value = _lookup(cfg, names)
    if name is not None:
        return value
    if default is not _MISSING:
        return default
    where = getattr(cfg, "path", "config")
    tried = " / ".join(repr(n) for n in names)
    raise ConfigError(f"{where}: required field {tried} not found (model_type={cfg.get('model_type')!r})")


def _where(cfg: Mapping[str, Any], name: str) -> str:
    return f"{getattr(cfg, 'path', 'config')}: field {name!r}"


def _lookup(cfg: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    """(the alias found, its value), or (None, None) when every alias is absent or null."""
    if not names:
        raise TypeError("a config accessor needs at least one field name")
    for name in names:
        value = cfg.get(name)
        if value is not None:
            return name, value
    return None, None


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _range_text(lo: Any, hi: Any, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    return f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"<= {hi}"


def config_int(cfg: Mapping[str, Any], *names: str, min: int | None = 1, max: int | None = None,
               default: Any = _MISSING) -> Any:
    """An integer field (first of ``names`` present), checked ``min <= value <= max``.

    JSON ``null`` counts as absent. A boolean, a fractional or integral float
    (``32.0``), a string (``"32"``) or a value out of range is a
    :class:`ConfigError` naming the field and the file. ``min`` defaults to 1
    (sizes and counts); pass ``min=0`` or ``min=None`` for ids and offsets.
    ``default`` (returned as is, unchecked) makes the field optional.
    """
    name, value = _lookup(cfg, names)
    if name is None:
        return config_get(cfg, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_where(cfg, name)} must be an integer, found {value!r} ({_json_type(value)})")
    if (min is not None and value < min) or (max is not None and value > max):
        raise ConfigError(f"{_where(cfg, name)} must be an integer {_range_text(min, max)}, found {value}")
    return value


def config_float(cfg: Mapping[str, Any], *names: str, min: float | None = None, max: float | None = None,
                 min_exclusive: bool = False, default: Any = _MISSING) -> Any:
    """A finite number field (an integer is accepted and returned as float), checked against the range.

    ``min_exclusive=True`` makes ``min`` a strict bound (e.g. ``rms_norm_eps > 0``).
    NaN, Infinity, booleans and strings are a :class:`ConfigError` naming the field.
    """
    name, value = _lookup(cfg, names)
    if name is None:
        return config_get(cfg, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{_where(cfg, name)} must be a number, found {value!r} ({_json_type(value)})")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range
        raise ConfigError(f"{_where(cfg, name)} must be a finite number, found an integer of {len(str(value))} digits") from None
    if not math.isfinite(value):
        raise ConfigError(f"{_where(cfg, name)} must be a finite number, found {value!r}")
    low = min is not None and (value <= min if min_exclusive else value < min)
    if low or (max is not None and value > max):
        raise ConfigError(f"{_where(cfg, name)} must be a number {_range_text(min, max, min_exclusive)}, found {value!r}")
    return value


def config_bool(cfg: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """A JSON boolean field; ``0``/``1``/``"true"`` are a :class:`ConfigError` naming the field."""
    name, value = _lookup(cfg, names)
    if name is None:
        return config_get(cfg, *names, default=default)
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(cfg, name)} must be true or false, found {value!r} ({_json_type(value)})")
    return value


def config_str(cfg: Mapping[str, Any], *names: str, choices: Iterable[str] | None = None,
               default: Any = _MISSING) -> Any:
    """A string field, optionally one of ``choices`` (e.g. ``hidden_act``)."""
    name, value = _lookup(cfg, names)
    if name is None:
        return config_get(cfg, *names, default=default)
    if not isinstance(value, str):
        raise ConfigError(f"{_where(cfg, name)} must be a string, found {value!r} ({_json_type(value)})")
    if choices is not None:
        allowed = sorted(choices)
        if value not in allowed:
            raise ConfigError(f"{_where(cfg, name)} must be one of {allowed}, found {value!r}")
    return value


def check_divisible(cfg: Mapping[str, Any], numerator: str, n: int, denominator: str, d: int) -> None:
    """Raise :class:`ConfigError` unless ``n`` (field ``numerator``) is a multiple of ``d`` (field ``denominator``).

    E.g. ``check_divisible(cfg, "hidden_size", h, "num_attention_heads", nh)`` and
    ``check_divisible(cfg, "num_attention_heads", nh, "num_key_value_heads", kv)``.
    """
    if d <= 0 or n % d:
        raise ConfigError(
            f"{getattr(cfg, 'path', 'config')}: {numerator} ({n}) must be a multiple of {denominator} ({d})"
        )
