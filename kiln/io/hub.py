"""Resolving a model path or HF hub id to a local directory, offline.

kiln never downloads. A model id ("org/name") is looked up in the local
HuggingFace cache that ``huggingface_hub`` fills, so models fetched once with
``hf download`` (or by transformers) load without network access.

Cache location (as huggingface_hub defines it): ``$HF_HUB_CACHE``, else
``$HUGGINGFACE_HUB_CACHE`` (legacy), else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``. Layout: ``models--org--name/refs/<ref>`` holds a
commit hash; ``models--org--name/snapshots/<hash>/`` holds the files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kiln.io.errors import ModelNotFoundError

__all__ = ["hf_cache_dir", "resolve_model_path"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _expand(p: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(p)))


def hf_cache_dir() -> Path:
    """The HF hub cache directory from the environment, as huggingface_hub computes it (it may not exist)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return _expand(os.environ[var])
    if os.environ.get("HF_HOME"):
        return _expand(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return _expand(xdg or "~/.cache") / "huggingface" / "hub"


def resolve_model_path(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """Return the local directory for a path or a cached HF model id.

    ``revision`` selects a ref (branch/tag name under ``refs/``) or a commit
    hash; by default ``refs/main``, or, when the cache has no ``refs/main``,
    the most recently modified snapshot. Never touches the network.
    """
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    text = str(path_or_id)
    if p.exists():
        raise ModelNotFoundError(f"{p}: expected a model directory, found a file")
    if not _REPO_ID.match(text):
        raise ModelNotFoundError(f"'{text}': no such directory, and it is not a HF model id like 'org/name'")

    cache = hf_cache_dir()
    repo = cache / ("models--" + text.replace("/", "--"))
    snapshots = repo / "snapshots"
    tried = [str(p.resolve()), str(repo)]
    if not snapshots.is_dir():
        raise ModelNotFoundError(
            f"model '{text}' not found: not a local directory and not in the HF cache; tried {tried}. "
            "kiln does not download: fetch it first (e.g. `hf download "
            f"{text}`) or set HF_HUB_CACHE / HF_HOME"
        )

    ref = revision or "main"
    ref_file = repo / "refs" / ref
    if ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8").strip()
        snap = snapshots / commit
        if not snap.is_dir():
            raise ModelNotFoundError(
                f"model '{text}': {ref_file} points to commit {commit}, but {snap} does not exist (incomplete cache)"
            )
        return snap
    if revision is not None:
        if _COMMIT.match(revision) and (snapshots / revision).is_dir():
            return snapshots / revision
        raise ModelNotFoundError(
            f"model '{text}': revision '{revision}' not in the cache; tried {ref_file} and {snapshots / revision}"
        )
    snaps = [d for d in snapshots.iterdir() if d.is_dir()]
    if not snaps:
        raise ModelNotFoundError(f"model '{text}': {snapshots} has no snapshots (and there is no {ref_file})")
    return max(snaps, key=lambda d: (d.stat().st_mtime, d.name))
