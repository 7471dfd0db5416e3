"""A wall-clock limit for the hardening tests: a hang is a failure, not a stuck suite."""

from __future__ import annotations

import contextlib
import signal
import threading


class Hang(Exception):
    """Raised by time_limit when the block runs too long (deliberately not a KilnError)."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "block"):
    """Raise Hang if the block runs longer than `seconds` (SIGALRM: interrupts a blocking open() too)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("time_limit uses SIGALRM and works only in the main thread")

    def fire(signum, frame):
        raise Hang(f"{what} did not finish within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
