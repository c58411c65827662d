"""A background thread that tells every server this worker is alive."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from paramserver.errors import ParamServerError
from workers.connection import ServerConnection

log = logging.getLogger(__name__)


class Heartbeat:
    """Heartbeats each connection every `interval_s` until `stop()`.

    A failed heartbeat is only logged: the next push or pull meets the same fault and deals
    with it (retry, or rejoin after SessionExpired). `stop()` wakes the thread at once; a
    heartbeat still in flight (each has the connection's deadline) ends when the caller
    closes the channel, if `stop()` gave up waiting for it.
    """

    def __init__(self, connections: Sequence[ServerConnection], interval_s: float) -> None:
        self._connections = connections
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ps-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval_s):
            for connection in self._connections:
                try:
                    connection.heartbeat()
                except ParamServerError as error:
                    log.debug("heartbeat to %s failed: %s", connection.address, error.message)

    def stop(self, timeout_s: float) -> None:
        """Stop heartbeating; wait up to `timeout_s` for a heartbeat in flight to finish."""
        self._stopped.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.debug("heartbeat thread still in a call after %.1fs; closing anyway", timeout_s)
