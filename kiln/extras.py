"""Optional dependencies: which extra of pyproject.toml brings a module, and the one error that says so.

A command that needs an optional package calls `require(module, needed_for)` before doing any
work; when the package is missing it raises `MissingExtraError`, whose message is one line naming
the exact install command. `missing_extra_in(exc)` turns an ImportError raised deeper down (a
library module importing soundfile, sklearn, ...) into the same error, so the CLI never shows a
ModuleNotFoundError traceback for an extra.

The install command is `pip install -e '.[extra]'` from the kiln checkout: the PyPI project
called "kiln" is an unrelated library, so `pip install 'kiln[extra]'` would not install this one.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kiln.errors import KilnError

__all__ = ["EXTRAS", "MODULES", "MissingExtraError", "install_command", "missing_extra_in", "require"]

# extra -> the distributions it installs (tests/cli checks this against pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "audio": ("soundfile",),
    "train": ("scikit-learn",),
    "onnx": ("onnx",),
    "gguf": ("gguf",),
    "vision": ("Pillow",),
    "video": ("Pillow", "av"),
    "gpu": ("torch",),
}

# import name -> (extra, distribution). triton comes with torch's Linux (CUDA) wheels.
MODULES: dict[str, tuple[str, str]] = {
    "soundfile": ("audio", "soundfile"),
    "sklearn": ("train", "scikit-learn"),
    "onnx": ("onnx", "onnx"),
    "gguf": ("gguf", "gguf"),
    "PIL": ("vision", "Pillow"),
    "av": ("video", "av"),
    "torch": ("gpu", "torch"),
    "triton": ("gpu", "torch"),
}


class MissingExtraError(KilnError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""

    def __init__(self, message: str, *, module: str, extra: str):
        super().__init__(message)
        self.module, self.extra = module, extra


def install_command(extra: str) -> str:
    """The command that installs `extra` from the kiln checkout."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {sorted(EXTRAS)}")
    return f"pip install -e '.[{extra}]'"


def _error(module: str, needed_for: str, cause: BaseException | None = None) -> MissingExtraError:
    extra, dist = MODULES[module]
    why = "is not installed" if cause is None or isinstance(cause, ModuleNotFoundError) else f"cannot be imported ({cause})"
    return MissingExtraError(
        f"{needed_for} needs {dist}, which {why}: run `{install_command(extra)}` in the kiln checkout "
        f"(or `pip install {dist}`)", module=module, extra=extra)


def require(module: str, needed_for: str) -> ModuleType:
    """Import `module` (a key of MODULES) or raise MissingExtraError naming its extra."""
    if module not in MODULES:
        raise ValueError(f"{module!r} is not an optional dependency; known: {sorted(MODULES)}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise _error(module, needed_for, e) from e


def missing_extra_in(exc: BaseException, needed_for: str = "this command") -> MissingExtraError | None:
    """The MissingExtraError for `exc` when it (or an exception it was raised from) is a
    ModuleNotFoundError for a module of an extra; None otherwise."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MissingExtraError):
            return e
        if isinstance(e, ModuleNotFoundError) and e.name:
            top = e.name.partition(".")[0]
            if top in MODULES:
                return _error(top, needed_for)
        e = e.__cause__ or e.__context__
    return None
