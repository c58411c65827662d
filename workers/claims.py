"""Claiming a worker id that a dead process may still hold.

A rank restarted by torchrun meets its predecessor's session when that one died without
leaving (SIGKILLed, crashed; a rank torchrun stops with SIGTERM leaves first, see
`workers.termination`): the server refuses a second live session for one worker id
(FAILED_PRECONDITION naming WORKER_ID_HELD) until that session's lease runs out. A bounded
retry of that one refusal lets the restart through after at most one lease while a real
duplicate still fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from paramserver.errors import WORKER_ID_HELD, FailedPrecondition

log = logging.getLogger(__name__)
T = TypeVar("T")

CLAIM_POLL_S = 0.25  # a held worker id is asked for again this often


def claiming(attempt: Callable[[], T], wait_s: float, address: str) -> T:
    """`attempt()`, tried again every CLAIM_POLL_S for up to `wait_s` while the server
    answers that a live session holds the worker id; any other error at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return attempt()
        except FailedPrecondition as error:
            if WORKER_ID_HELD not in error.message or time.monotonic() >= deadline:
                raise
            log.info("%s: %s; trying again for up to %.0fs", address,
                     error.message.split(":")[0], deadline - time.monotonic())
            time.sleep(CLAIM_POLL_S)
