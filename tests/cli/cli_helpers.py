"""Running the `kiln` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Import names a test can mark as "not installed": the wrapper puts None in sys.modules for each,
# which makes `import NAME` raise ModuleNotFoundError exactly as a missing package does.
_WRAPPER = ("import sys\n"
            "for name in sys.argv.pop(1).split(','):\n"
            "    if name: sys.modules[name] = None\n"
            "from kiln.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


def run_kiln(*args: str, cwd: Path, without: tuple[str, ...] = (), timeout: int = 300) -> subprocess.CompletedProcess:
    """`kiln ARGS...` in a subprocess with a clean environment: no Triton interpreter (which would
    let --device cuda pass on a CPU machine), an empty HF cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["HF_HUB_CACHE"] = str(cwd / "hf-cache")
    # the kiln of this checkout, not whichever one is installed (cwd is a scratch directory)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-c", _WRAPPER, ",".join(without), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
