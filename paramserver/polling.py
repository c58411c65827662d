"""Bounded polling: wait until a probe answers, or fail after a deadline.

Pure Python, no I/O of its own, so both sides of the system (the servers' tests, the workers'
round observer, the local-cluster drivers) may use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(RuntimeError):
    """Something that must happen within a bound did not (a fault run counts it as a hang)."""


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float,
             period_s: float = 0.05) -> T:
    """Poll `probe` every `period_s` until it returns something truthy, and return that.

    Raises WaitTimeout naming `what` once `timeout_s` passed; an exception from `probe`
    propagates at once (a probe raises to stop the wait early).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{what}: not within {timeout_s:.1f}s")
        time.sleep(period_s)
