"""Errors raised by the loading layer.

Every loading failure (a corrupt file, a missing key, a wrong shape, a bad
config or tokenizer file, a model that is not in the cache) is a
``CheckpointError``: callers catch one type, and because it subclasses
``ValueError`` it reads as "the input is wrong", not "kiln is broken". The
subclasses only sharpen the category; messages always name the file, key or
path involved and what was expected.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or its contents do not match what was expected."""


class ConfigError(CheckpointError):
    """config.json is missing, unreadable, or lacks a required field."""


class TokenizerError(CheckpointError):
    """Tokenizer files are missing or inconsistent, or a chat template fails."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """A model path or hub id could not be resolved to a local directory.

    Also a ``FileNotFoundError`` so that generic "file missing" handlers work.
    """
