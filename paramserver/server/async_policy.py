"""Asynchronous updates: every push is applied as it arrives (Hogwild-style PS)."""

from __future__ import annotations

import torch

from paramserver.codecs import Update
from paramserver.codecs.base import to_dense
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

    def submit(self, worker_id: str, step: int, weight: float, updates: dict[str, Update],
               buffers: list[torch.Tensor]) -> PushResult:
        try:
            grads = {}
            for name, update in updates.items():
                spec = self._store.spec(name)
                grads[name] = to_dense(update, spec.numel, spec.dtype)
            with self._store.lock:
                self.check_step(worker_id, step)
                staleness = self._store.version - step
                version = self._store.apply(grads)
        finally:
            for buffer in buffers:
                self._pool.give(buffer)
        return PushResult(version=version, applied=True, staleness=staleness)

    def pending(self) -> int:
        return 0
