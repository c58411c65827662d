"""Gradient buckets: which parameters travel together when pushes overlap backward.

Backward produces gradients roughly in the reverse order of the model's parameters, so, as
PyTorch's DistributedDataParallel does, the first step fills buckets from the last parameter
to the first; the first bucket is then ready early in backward and its push starts while the
rest of backward still runs. After the first step the buckets are rebuilt in the order the
gradients actually arrived, with parameters that got none (unused in forward) last, so that
one unused parameter does not hold back a whole bucket. A bucket closes once it holds
`bucket_bytes` or more.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

DEFAULT_BUCKET_BYTES = 4 << 20


def assign_buckets(sizes: Sequence[tuple[str, int]], bucket_bytes: int) -> list[list[str]]:
    """Group (name, nbytes), in the given order, into buckets of at least `bucket_bytes`
    (the last one may be smaller). Every name lands in exactly one bucket."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket size must be positive, got {bucket_bytes}")
    buckets: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for name, nbytes in sizes:
        current.append(name)
        filled += nbytes
        if filled >= bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
    if current:
        buckets.append(current)
    return buckets


class BucketTracker:
    """Tracks which parameters' gradients are ready in this step; thread-safe, since
    autograd may run hooks on its own threads.

    `ready(name)` returns the names of a bucket that just became complete (to push now), or
    an empty list. `remaining()` lists the ready names not yet handed out.
    """

    def __init__(self, sizes: Sequence[tuple[str, int]], bucket_bytes: int) -> None:
        self._sizes = dict(sizes)
        self._bucket_bytes = bucket_bytes
        self._lock = threading.Lock()
        self._rebuilt = False
        self._use(assign_buckets(list(reversed(sizes)), bucket_bytes))
        self.reset()

    def _use(self, buckets: list[list[str]]) -> None:
        self._buckets = buckets
        self._bucket_of = {name: i for i, bucket in enumerate(buckets) for name in bucket}

    @property
    def buckets(self) -> list[list[str]]:
        return [list(bucket) for bucket in self._buckets]

    def reset(self) -> None:
        """Start a new step; after the first one, rebuild the buckets in arrival order."""
        with self._lock:
            if not self._rebuilt and getattr(self, "_order", None):
                arrived = set(self._order)
                order = self._order + [n for n in self._sizes if n not in arrived]
                self._use(assign_buckets([(n, self._sizes[n]) for n in order],
                                         self._bucket_bytes))
                self._rebuilt = True
            self._missing = [len(bucket) for bucket in self._buckets]
            self._ready: set[str] = set()
            self._order: list[str] = []
            self._handed_out: set[str] = set()
            self.repeated: list[str] = []  # ready twice in one step (a second backward)

    def ready(self, name: str) -> list[str]:
        with self._lock:
            if name in self._ready:
                self.repeated.append(name)
                return []
            self._ready.add(name)
            self._order.append(name)
            index = self._bucket_of[name]
            self._missing[index] -= 1
            if self._missing[index]:
                return []
            names = self._buckets[index]
            self._handed_out.update(names)
            return list(names)

    def remaining(self) -> set[str]:
        with self._lock:
            return self._ready - self._handed_out

    def handed_out(self) -> set[str]:
        with self._lock:
            return set(self._handed_out)
