"""Errors raised by the loading layer (defined in :mod:`kiln.errors`, re-exported here).

Every loading failure (a corrupt file, a missing key, a wrong shape, a bad
config or tokenizer file, a model that is not in the cache) is a
``CheckpointError``: callers catch one type, and because it subclasses
``ValueError`` it reads as "the input is wrong", not "kiln is broken". The
subclasses only sharpen the category; messages always name the file, key or
path involved and what was expected. All of them are ``kiln.errors.KilnError``.
"""

from __future__ import annotations

from kiln.errors import CheckpointError, ConfigError, KilnError, ModelNotFoundError, TokenizerError

__all__ = ["KilnError", "CheckpointError", "ConfigError", "TokenizerError", "ModelNotFoundError"]
