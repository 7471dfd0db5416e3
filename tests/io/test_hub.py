"""kiln.io.hub: offline resolution against a fake HF cache, with huggingface_hub as the reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kiln.io.errors import CheckpointError, ModelNotFoundError
from kiln.io.hub import hf_cache_dir, resolve_model_path

OLD, NEW = "a" * 40, "b" * 40


def _fake_repo(cache, repo_id, snapshots, main=None, refs=None):
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for i, rev in enumerate(snapshots):
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (snap / "config.json").write_text('{"model_type": "llama"}')
        os.utime(snap, (1_000_000 + i, 1_000_000 + i))  # later in the list = newer
    for name, rev in {**(refs or {}), **({"main": main} if main else {})}.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(rev)
    return repo


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    c = tmp_path / "hub"
    c.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    return c


def test_local_directory_wins(tmp_path, cache):
    d = tmp_path / "org" / "name"
    d.mkdir(parents=True)
    assert resolve_model_path(d) == d
    assert resolve_model_path(str(d)) == d


def test_refs_main_matches_huggingface_hub(cache):
    from huggingface_hub import snapshot_download

    _fake_repo(cache, "org/name", [OLD, NEW], main=OLD)  # main deliberately not the newest
    ours = resolve_model_path("org/name")
    assert ours == cache / "models--org--name" / "snapshots" / OLD
    ref = snapshot_download("org/name", cache_dir=cache, local_files_only=True)
    assert ours.resolve() == type(ours)(ref).resolve()


def test_newest_snapshot_without_refs(cache):
    _fake_repo(cache, "gpt2", [OLD, NEW])
    assert resolve_model_path("gpt2").name == NEW


def test_revision_by_ref_and_commit(cache):
    from huggingface_hub import snapshot_download

    _fake_repo(cache, "org/name", [OLD, NEW], main=NEW, refs={"v1": OLD})
    assert resolve_model_path("org/name", revision="v1").name == OLD
    assert resolve_model_path("org/name", revision=NEW).name == NEW
    ref = snapshot_download("org/name", cache_dir=cache, local_files_only=True, revision="v1")
    assert resolve_model_path("org/name", revision="v1").resolve() == type(cache)(ref).resolve()
    with pytest.raises(ModelNotFoundError, match=r"revision 'v9' not in the cache; tried .*refs/v9"):
        resolve_model_path("org/name", revision="v9")


def test_not_found_names_paths(cache):
    with pytest.raises(ModelNotFoundError) as ei:
        resolve_model_path("org/missing")
    msg = str(ei.value)
    assert "org/missing" in msg and str(cache / "models--org--missing") in msg and "does not download" in msg
    assert isinstance(ei.value, CheckpointError) and isinstance(ei.value, FileNotFoundError)


def test_broken_cache_entries(cache, tmp_path):
    _fake_repo(cache, "org/broken", [OLD], main=NEW)
    with pytest.raises(ModelNotFoundError, match=rf"refs/main points to commit {NEW}, but .* does not exist"):
        resolve_model_path("org/broken")
    (cache / "models--org--empty" / "snapshots").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match=r"has no snapshots"):
        resolve_model_path("org/empty")
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="expected a model directory, found a file"):
        resolve_model_path(f)
    with pytest.raises(ModelNotFoundError, match="not a HF model id"):
        resolve_model_path("./no/such/dir/at/all")


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_CACHE": "/x/hubcache", "HF_HOME": "/y"},
        {"HUGGINGFACE_HUB_CACHE": "/legacy/cache", "HF_HOME": "/y"},
        {"HF_HOME": "/y/hfhome"},
        {"XDG_CACHE_HOME": "/xdg"},
        {},
    ],
)
def test_cache_dir_matches_huggingface_hub(monkeypatch, tmp_path, env):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ref = subprocess.run(
        [sys.executable, "-c", "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    ).stdout.strip()
    assert str(hf_cache_dir()) == ref
