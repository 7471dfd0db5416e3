"""kiln's error hierarchy (a leaf module: it imports nothing from kiln).

Every error kiln raises on purpose is a :class:`KilnError`, so a caller (the
CLI, a server) can tell "kiln refused this input, with a message naming what is
wrong" from "kiln has a bug" with one ``except KilnError``. Each subclass also
refines the standard exception it means (``ValueError`` for bad input,
``TypeError`` for a wrong dtype, ``FileNotFoundError`` for a missing model), so
code that catches the standard types keeps working.

::

    KilnError
    ├── GraphError(ValueError)            ill-formed graph or graph JSON (kiln.ir)
    ├── InputError(ValueError)            bad run input: name, shape, dtype (kiln.runtime)
    ├── KilnTypeError(TypeError)          a value of the wrong dtype or type
    ├── AudioError(ValueError)            bad audio file or samples (kiln.io.audio)
    └── CheckpointError(ValueError)       bad checkpoint file or contents (kiln.io)
        ├── ConfigError                   config.json (or another JSON side file) is bad
        │   └── UnsupportedModelError     model_type no family implements (kiln.models.registry)
        ├── TokenizerError                tokenizer files or chat template
        └── ModelNotFoundError(FileNotFoundError)   path / hub id not found

The classes are defined here and re-exported where they were first defined
(``kiln.ir.errors``, ``kiln.io.errors``, ...), so both import paths name the same
class. ``docs/errors.md`` lists the hierarchy and which layer raises what.
"""

from __future__ import annotations

__all__ = [
    "KilnError",
    "GraphError",
    "InputError",
    "KilnTypeError",
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "TokenizerError",
    "ModelNotFoundError",
    "DistributedError",
]


class KilnError(Exception):
    """Base of every error kiln raises deliberately; the message names what is wrong and what was expected."""


class GraphError(KilnError, ValueError):
    """A graph is ill-formed: wrong shape, wrong dtype, unknown value or name, or a malformed graph file."""


class InputError(KilnError, ValueError):
    """A run input or parameter is missing, unexpected, or of the wrong shape or dtype."""


class KilnTypeError(KilnError, TypeError):
    """A value has the wrong dtype (or Python type) for where it is used, e.g. integer weights for a float layer."""


class AudioError(KilnError, ValueError):
    """Bad audio input: missing/empty/unreadable file, empty or non-finite samples, wrong shape, bad rate."""


class CheckpointError(KilnError, ValueError):
    """A checkpoint file or its contents do not match what was expected."""


class ConfigError(CheckpointError):
    """config.json (or another JSON side file) is missing, unreadable, or has a missing or invalid field."""


class TokenizerError(CheckpointError):
    """Tokenizer files are missing or inconsistent, or a chat template fails."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """A model path or hub id could not be resolved to a local directory.

    Also a ``FileNotFoundError`` so that generic "file missing" handlers work.
    """


class DistributedError(KilnError, RuntimeError):
    """A collective or a sharded model needs a process group that is missing or of another size."""
