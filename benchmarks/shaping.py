"""Emulated link speeds for benchmarks: token buckets a client's connections are paced by.

On loopback the network is almost free, so compression rarely pays; a benchmark that wants
to see a slower link hands the client a shaper per server:

    ParameterClient(servers, "bench", shaper_factory=capped_links(12.5e6))  # 100 Mbit/s

It caps this client alone (every message it sends or receives waits for its tokens); `tc`
(benchmarks/suite/netcap.py) caps the whole machine instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from workers.connection import LinkShaper


class TokenBucket:
    """Caps a stream at `rate_bytes_per_s` (bursts up to `burst_bytes`) by sleeping.

    Thread-safe: `_lock` guards the tokens and the refill time; the sleep happens outside it.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int = 64 << 10) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_bytes_per_s}")
        self.rate = rate_bytes_per_s
        self.burst = burst_bytes
        self._tokens = float(burst_bytes)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def charge(self, nbytes: int) -> None:
        """Block until `nbytes` may pass (the bucket may go into debt; the debt is slept off)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class TokenBucketLink:
    """A `LinkShaper` with one token bucket per direction, each at `bytes_per_s`."""

    def __init__(self, bytes_per_s: float, burst_bytes: int = 64 << 10) -> None:
        self.uplink = TokenBucket(bytes_per_s, burst_bytes)
        self.downlink = TokenBucket(bytes_per_s, burst_bytes)

    def send(self, nbytes: int) -> None:
        self.uplink.charge(nbytes)

    def receive(self, nbytes: int) -> None:
        self.downlink.charge(nbytes)


def capped_links(bytes_per_s: float | None) -> Callable[[str], LinkShaper] | None:
    """A `shaper_factory` giving each server its own `TokenBucketLink` (None: no cap)."""
    if not bytes_per_s:
        return None
    rate = bytes_per_s
    return lambda _address: TokenBucketLink(rate)
