"""Asynchronous federated learning with a buffer (FedBuff, Nguyen et al. 2022).

Clients train whenever they like on the newest global model and push their update; the
server adds each into a buffer, weighted by the client's weight / sqrt(1 + staleness), and
applies the buffer's weighted mean once `buffer` updates arrived.
"""

from __future__ import annotations

import math
import threading

import torch

from paramserver.codecs import Update
from paramserver.codecs.base import add_into
from paramserver.federated.config import FederatedConfig
from paramserver.federated.screening import screen
from paramserver.server.assembly import BufferPool
from paramserver.server.async_policy import AsyncPolicy
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult


def staleness_weight(weight: float, staleness: int) -> float:
    return weight / math.sqrt(1.0 + staleness)


class FedBuffPolicy(AsyncPolicy):
    def __init__(self, store: ParameterStore, pool: BufferPool,
                 config: FederatedConfig) -> None:
        super().__init__(store, pool)
        self.config = config
        self._lock = threading.Lock()
        self._sums: dict[str, torch.Tensor] = {}
        self._total = 0.0
        self._count = 0
        self.dropouts: list[str] = []
        self.skipped_rounds: list[int] = []

    def join_round(self, worker_id: str, round_: int, timeout_s: float) -> tuple[int, bool, int]:
        return self._store.version, True, 0

    def submit(self, worker_id: str, step: int, weight: float, updates: dict[str, Update],
               buffers: list[torch.Tensor]) -> PushResult:
        try:
            screen(updates, self.config.clip_norm, self.config.reject_norm)
            with self._lock:
                self.check_step(worker_id, step)
                staleness = self._store.version - step
                scaled = staleness_weight(weight, staleness)
                for name, update in updates.items():
                    spec = self._store.spec(name)
                    total = self._sums.get(name)
                    if total is None:
                        total = self._sums[name] = torch.zeros(spec.numel, dtype=spec.dtype)
                    add_into(total, update, scaled)
                self._total += scaled
                self._count += 1
                if self._count < self.config.buffer:
                    return PushResult(self._store.version, applied=False, staleness=staleness)
                means = {n: total.div_(self._total) for n, total in self._sums.items()}
                version = self._store.apply(means)
                self._sums, self._total, self._count = {}, 0.0, 0
                return PushResult(version, applied=True, staleness=staleness)
        finally:
            for buffer in buffers:
                self._pool.give(buffer)

    def pending(self) -> int:
        with self._lock:
            return self._count
