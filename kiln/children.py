"""Forked child processes: starting one, reaping it without blocking, killing it. A leaf module
(stdlib only) for the places that fork helpers: compile workers (kiln/backends/triton/
compile_workers.py) and planning ahead (kiln/compile/plan_ahead.py)."""

from __future__ import annotations

import os
import warnings
from typing import Callable


def fork(run: Callable[[], None]) -> int:
    """Fork; the child runs `run` and exits (status 1 if `run` returns or raises instead of calling
    os._exit itself: nothing of the parent's, no atexit handler, runs in it). Returns the child's pid.
    Python warns that forking a multi-threaded process may deadlock the child; callers bound how
    long they wait for one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            run()
        finally:
            os._exit(1)
    return pid


def exit_status(pid: int) -> int | None:
    """The child's exit code once it has ended (reaped now; -signal when killed), else None. A pid
    that is no child of this process (reaped already) counts as ended badly: -1."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    if not done:
        return None
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def kill(pid: int) -> None:
    """SIGKILL the child and reap it."""
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
