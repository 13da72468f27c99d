"""Test hooks: ``OMETRIA_SPARK_CRASH_AT=name`` kills this process at the named phase.

With SIGKILL, the way a lost driver or an OOM kill stops a job (no cleanup, no flush), so
crash tests can stop at exact phases. With the variable unset (or naming another phase)
the hooks do nothing.
"""

from __future__ import annotations

import os
import signal
import threading

CRASH_AT_ENV = "OMETRIA_SPARK_CRASH_AT"
CRASH_DELAY_ENV = "OMETRIA_SPARK_CRASH_DELAY"


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str, *, when: bool = True) -> None:
    """Kill this process now if ``name`` is the configured crash point (and ``when``)."""
    if when and os.environ.get(CRASH_AT_ENV) == name:
        _kill()


def crash_later(name: str) -> None:
    """If ``name`` is the configured crash point, kill this process from a timer thread
    ``OMETRIA_SPARK_CRASH_DELAY`` seconds (default 1.0) from now: armed just before a long
    step (a MERGE), the kill lands while that step runs."""
    if os.environ.get(CRASH_AT_ENV) != name:
        return
    timer = threading.Timer(float(os.environ.get(CRASH_DELAY_ENV, "1.0")), _kill)
    timer.daemon = True
    timer.start()
