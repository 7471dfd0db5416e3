"""Extras: pyproject.toml and kiln.extras agree, and each command that needs one names it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from cli_helpers import run_kiln

from kiln.extras import EXTRAS, MODULES, MissingExtraError, install_command, missing_extra_in, require

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in requirements}


def test_the_issue_s_extras_exist():
    assert {"audio", "train", "onnx", "gguf", "vision", "gpu", "all", "test"} <= set(_extras())


def test_kiln_extras_table_matches_pyproject():
    extras = _extras()
    for extra, dists in EXTRAS.items():
        assert _names(extras[extra]) == {d.lower() for d in dists}, extra
    for module, (extra, dist) in MODULES.items():
        assert dist.lower() in _names(extras[extra]), (module, extra, dist)


def test_all_is_every_user_facing_extra():
    extras = _extras()
    union = set().union(*(_names(reqs) for name, reqs in extras.items() if name not in ("all", "test")))
    assert _names(extras["all"]) == union
    assert set(extras) - {"all", "test"} == set(EXTRAS)


def test_the_test_extra_lets_torch_bring_a_consistent_triton():
    test = _extras()["test"]
    assert "torch==2.13.0" in test
    tritons = [r for r in test if r.lower().startswith("triton")]
    # torch 2.13.0's Linux wheels declare exactly this; any other pin cannot resolve on PyPI
    assert tritons == ['triton==3.7.1; platform_system == "Linux" and python_version < "3.15"']


def test_require_names_the_install_command():
    assert require("soundfile", "x").__name__ == "soundfile"
    assert install_command("audio") == "pip install -e '.[audio]'"
    with pytest.raises(ValueError, match="not an optional dependency"):
        require("numpy", "x")


def test_an_import_error_deep_down_becomes_the_extra_hint():
    try:
        try:
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        except ImportError as e:
            raise ImportError("loading the digits needs scikit-learn") from e
    except ImportError as e:
        err = missing_extra_in(e, "kiln train digits")
    assert isinstance(err, MissingExtraError) and err.extra == "train"
    assert "pip install -e '.[train]'" in str(err) and "scikit-learn" in str(err)
    assert missing_extra_in(ModuleNotFoundError("No module named 'kiln.nope'", name="kiln.nope")) is None
    assert missing_extra_in(ValueError("x")) is None


@pytest.mark.parametrize("without,argv,extra,dist", [
    ("sklearn", ["train", "digits", "--epochs", "1"], "train", "scikit-learn"),
    ("soundfile", ["run", "whisper", "a.wav"], "audio", "soundfile"),
    ("torch", ["run", "llama", "--prompt", "x", "--device", "cuda"], "gpu", "torch"),
    ("gguf", ["run", "junk.gguf", "--prompt", "x"], "gguf", "gguf"),  # imported deep in the loader
])
def test_a_command_without_its_extra_says_which_to_install(workdir, without, argv, extra, dist):
    res = run_kiln(*argv, cwd=workdir, without=(without,))
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"pip install -e '.[{extra}]'" in lines[0] and f"needs {dist}" in lines[0], lines[0]
