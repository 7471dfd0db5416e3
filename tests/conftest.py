"""Shared test setup: deterministic seeds, the `gpu` marker's skip, and a compile cache of the session's own.

The persistent compile cache stays on (every test that compiles a graph twice exercises it),
in a temporary directory per test process, so no entry outlives the session or comes from a
user's ~/.cache/kiln."""

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-tests-cache-"))


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
