"""kiln's error hierarchy: one KilnError base, each class refining a standard type, the same class
under every import path, and every class documented in docs/errors.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import kiln.errors as E
from kiln.io.audio import AudioError
from kiln.io.errors import CheckpointError, ConfigError, ModelNotFoundError, TokenizerError
from kiln.ir.errors import GraphError
from kiln.models.registry import UnsupportedModelError
from kiln.runtime.compiled_graph import InputError

DOC = Path(__file__).parents[2] / "docs" / "errors.md"

STANDARD = {
    E.GraphError: ValueError, E.InputError: ValueError, E.KilnTypeError: TypeError, E.AudioError: ValueError,
    E.CheckpointError: ValueError, E.ConfigError: ValueError, E.TokenizerError: ValueError,
    E.ModelNotFoundError: FileNotFoundError, UnsupportedModelError: ValueError, E.DistributedError: RuntimeError,
}


def test_every_class_is_a_kiln_error_and_refines_its_standard_type():
    classes = {c for _, c in inspect.getmembers(E, inspect.isclass) if issubclass(c, Exception)}
    assert classes - {E.KilnError} <= set(STANDARD), "a new class in kiln.errors needs its standard type here"
    for cls, std in STANDARD.items():
        assert issubclass(cls, E.KilnError) and issubclass(cls, std), cls
    assert issubclass(E.ModelNotFoundError, E.CheckpointError)
    assert issubclass(UnsupportedModelError, E.ConfigError)


def test_old_import_paths_name_the_same_classes():
    assert (GraphError, InputError, AudioError) == (E.GraphError, E.InputError, E.AudioError)
    assert (CheckpointError, ConfigError, TokenizerError, ModelNotFoundError) == (
        E.CheckpointError, E.ConfigError, E.TokenizerError, E.ModelNotFoundError)


def test_every_class_is_documented():
    doc = DOC.read_text()
    for cls in [E.KilnError, *STANDARD]:
        assert cls.__name__ in doc, f"{cls.__name__} is missing from docs/errors.md"


def test_errors_raised_by_kiln_are_caught_as_kiln_error_and_as_the_standard_type(tmp_path):
    import kiln
    from kiln.io.safetensors_file import save_safetensors

    with pytest.raises(E.KilnError):
        kiln.load_graph(tmp_path / "missing.json")
    with pytest.raises(ValueError):
        kiln.load_graph(tmp_path / "missing.json")
    with pytest.raises(E.KilnTypeError, match="tensor 'x': expected np.ndarray, found list"):
        save_safetensors(tmp_path / "x.safetensors", {"x": [1, 2]})
    with pytest.raises(TypeError):
        save_safetensors(tmp_path / "x.safetensors", {"x": [1, 2]})
    g = kiln.Graph("g")
    g.output("y", g.neg(g.input("x", (2,))))
    with pytest.raises(E.InputError):
        kiln.compile(g).run(x=np.zeros(3, np.float32))
