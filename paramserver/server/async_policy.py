"""Asynchronous updates: every push is applied as it arrives (Hogwild-style PS).

`max_staleness` bounds how old the parameters behind a gradient may be: a push computed on
a version more than that many updates behind is ABORTED, with its staleness in the message.
"""

from __future__ import annotations

import torch

from paramserver.codecs import Update
from paramserver.codecs.base import to_dense
from paramserver.errors import Aborted, FailedPrecondition
from paramserver.server.assembly import BufferPool
from paramserver.server.policy import PolicyDefaults
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult


class AsyncPolicy(PolicyDefaults):
    """Applies each gradient at once; staleness = server version - version it was computed on."""

    def __init__(self, store: ParameterStore, pool: BufferPool,
                 max_staleness: int | None = None) -> None:
        self._store = store
        self._pool = pool
        self._max_staleness = max_staleness

    def check_step(self, worker_id: str, step: int) -> None:
        current = self._store.version
        if step > current:
            raise FailedPrecondition(
                f"push computed on version {step}, but the server is only at version {current}")
        if step < 0:
            raise FailedPrecondition(f"negative step {step}")
        staleness = current - step
        if self._max_staleness is not None and staleness > self._max_staleness:
            raise Aborted(f"gradient staleness {staleness} exceeds --max-staleness "
                          f"{self._max_staleness} (computed on version {step}, server at "
                          f"{current}); pull and recompute")

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
        self.applied(worker_id)
        return PushResult(version=version, applied=True, staleness=staleness)

    def applied(self, worker_id: str) -> None:
        """Hook after a push is applied (SSP counts clocks here)."""

    def pending(self) -> int:
        return 0
