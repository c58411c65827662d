"""Asynchronous updates: every push is applied as it arrives (Hogwild-style PS)."""

from __future__ import annotations

import torch

from paramserver.errors import FailedPrecondition
from paramserver.server.assembly import BufferPool
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult


class AsyncPolicy:
    """Applies each gradient at once; staleness = server version - version it was computed on."""

    def __init__(self, store: ParameterStore, pool: BufferPool) -> None:
        self._store = store
        self._pool = pool

    def check_step(self, worker_id: str, step: int) -> None:
        current = self._store.version
        if step > current:
            raise FailedPrecondition(
                f"push computed on version {step}, but the server is only at version {current}")
        if step < 0:
            raise FailedPrecondition(f"negative step {step}")

    def submit(self, worker_id: str, step: int, weight: float,
               grads: dict[str, torch.Tensor]) -> PushResult:
        try:
            with self._store.lock:
                self.check_step(worker_id, step)
                staleness = self._store.version - step
                version = self._store.apply(grads)
        finally:
            for grad in grads.values():
                self._pool.give(grad)
        return PushResult(version=version, applied=True, staleness=staleness)

    def pending(self) -> int:
        return 0
