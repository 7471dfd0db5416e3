"""Triton backend tests: on a machine without a GPU the kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before any kernel module is imported (Triton reads it when a
kernel is decorated). With a CUDA GPU the same tests run the compiled kernels on the GPU.
Kernels generated during the tests go to a fresh cache directory.
"""

import os
import sys
import tempfile
from pathlib import Path

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-triton-tests-"))
sys.path.insert(0, str(Path(__file__).parent))
