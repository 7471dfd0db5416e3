"""Reading a model's ``config.json``.

Only the raw JSON is read here; family-specific typed config dataclasses live
in ``kiln.models``. The value of this module is in its errors (which file,
which field, which names were tried) and in ``config_get``, which covers the
many aliases HF families use for the same hyperparameter
(``num_key_value_heads`` / ``n_kv_heads`` / ``multi_query_group_num`` ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from kiln.io.errors import ConfigError

__all__ = ["ModelConfig", "read_config", "config_get"]

_MISSING: Any = object()


class ModelConfig(dict):
    """The parsed config.json: a plain dict that also remembers its file (``.path``) for error messages."""

    path: str = "config"


def read_config(path: str | os.PathLike, filename: str = "config.json") -> ModelConfig:
    """Read ``<dir>/config.json`` (or the JSON file ``path`` itself) as a dict."""
    path = Path(path)
    file = path / filename if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found (expected a HF '{filename}')")
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not valid UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{file}: expected a JSON object at top level, found {type(cfg).__name__}")
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
    for name in names:
        value = cfg.get(name)
        if value is not None:
            return value
    if default is not _MISSING:
        return default
    where = getattr(cfg, "path", "config")
    tried = " / ".join(repr(n) for n in names)
    raise ConfigError(f"{where}: required field {tried} not found (model_type={cfg.get('model_type')!r})")
