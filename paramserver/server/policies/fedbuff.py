"""Asynchronous federated learning with a buffer (FedBuff, Nguyen et al. 2022).

Clients train whenever they like on the newest global model and push their update; the
server adds each into a buffer, weighted by the client's weight / sqrt(1 + staleness), and
applies the buffer's weighted mean once `buffer` updates arrived.
"""

from __future__ import annotations

import math
import threading

from paramserver.federated.screening import screen
from paramserver.server.limits import LongPoll
from paramserver.server.policies.aggregate import Aggregate
from paramserver.server.policies.asynchronous import check_async_step
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyDefaults,
    PolicyReport,
    ReceivedPush,
)
from paramserver.types import PushResult, RoundClose, RoundJoin


def staleness_weight(weight: float, staleness: int) -> float:
    return weight / math.sqrt(1.0 + staleness)


class FedBuffPolicy(PolicyDefaults):
    """`_lock` guards the buffer; lock order: `_lock` before `store.lock`."""

    def __init__(self, context: PolicyContext) -> None:
        self.config = context.config.federated
        self._store = context.store
        self._pool = context.pool
        self._lock = threading.Lock()
        self._buffer = Aggregate(context.pool, context.store.spec)
        self._count = 0

    def join_round(self, worker_id: str, round_: int, timeout_s: float,
                   poll: LongPoll | None = None, close: RoundClose | None = None) -> RoundJoin:
        return RoundJoin(round=self._store.version, sampled=True, sampled_count=0)

    def check_step(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        check_async_step(self._store, step, None)

    def submit(self, push: ReceivedPush) -> PushResult:
        screen(push.updates, self.config.clip_norm, self.config.reject_norm)
        with self._lock:
            staleness = check_async_step(self._store, push.step, None)
            self._buffer.add_push(push.updates, staleness_weight(push.weight, staleness),
                                  push.buffers)
            self._count += 1
            if self._count < self.config.buffer:
                return PushResult(version=self._store.version, applied=False,
                                  staleness=staleness)
            with self._buffer:
                version = self._store.apply(self._buffer.means())
            self._buffer = Aggregate(self._pool, self._store.spec)
            self._count = 0
            return PushResult(version=version, applied=True, staleness=staleness)

    def report(self) -> PolicyReport:
        with self._lock:
            return PolicyReport(pending_pushes=self._count)
