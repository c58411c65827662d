"""Federated rounds on a parameter server (FedAvg and friends, McMahan et al. 2017).

Round r starts from the global model at version r. When it opens, the server samples a
fraction of the live clients, reproducibly from (seed, r, client ids). Sampled clients
train locally and push their update (global - local) with their weight; the round closes
once every live sampled client reported, or at the round timeout with whoever reported if
that is enough (`min_clients`, `min_completion_rate`). Too few reports skip the round: the
version advances, the global model stays unchanged. The weighted mean of the updates is
applied by the server optimizer (SGD lr 1 = FedAvg; momentum = FedAvgM; Adam = FedAdam).
"""

from __future__ import annotations

import logging
import math
import random
import time

import torch

from paramserver.codecs import Update
from paramserver.errors import FailedPrecondition
from paramserver.federated.config import FederatedConfig
from paramserver.federated.screening import screen
from paramserver.server.assembly import BufferPool
from paramserver.server.membership import Membership
from paramserver.server.store import ParameterStore
from paramserver.server.sync_policy import SyncPolicy
from paramserver.types import PushResult

log = logging.getLogger(__name__)


def sample_clients(clients: set[str], fraction: float, min_clients: int, seed: int,
                   round_: int) -> frozenset[str]:
    """ceil(fraction * n) clients (at least min_clients, at most n), the same for the same
    (seed, round, clients) on every run."""
    ordered = sorted(clients)
    count = min(len(ordered), max(min_clients, math.ceil(fraction * len(ordered))))
    return frozenset(random.Random(f"{seed}:{round_}").sample(ordered, count))


class RoundPolicy(SyncPolicy):
    """A sync step per round, whose members are the round's sampled clients."""

    def __init__(self, store: ParameterStore, members: Membership, pool: BufferPool,
                 config: FederatedConfig) -> None:
        super().__init__(store, members, pool)
        self.config = config
        self._round = -1
        self._sampled: frozenset[str] = frozenset()
        self._round_opened = 0.0
        self.dropouts: list[str] = []
        self.skipped_rounds: list[int] = []

    def _open_round(self) -> None:
        """Sample the current round's clients once the job is formed (caller holds _lock)."""
        version = self._store.version
        if self._round == version or not self._members.formed:
            return
        self._round, self._round_opened = version, time.monotonic()
        self._sampled = sample_clients(self._members.live_workers(), self.config.fraction,
                                       self.config.min_clients, self.config.seed, version)
        log.info("round %d: sampled %d clients %s", version, len(self._sampled),
                 sorted(self._sampled))

    def join_round(self, worker_id: str, round_: int, timeout_s: float) -> tuple[int, bool, int]:
        """Wait until round >= `round_` is open; (round, sampled?, how many sampled)."""
        self._store.wait_for_version(round_, timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._open_round()
                if self._round >= 0:
                    return self._round, worker_id in self._sampled, len(self._sampled)
            if time.monotonic() > deadline:
                raise FailedPrecondition("the federation has not formed yet: fewer clients "
                                         f"joined than --workers ({self._members.live_workers()})")
            time.sleep(0.05)

    def _check(self, worker_id: str, step: int) -> None:
        super()._check(worker_id, step)
        self._open_round()
        if worker_id not in self._sampled:
            raise FailedPrecondition(f"client {worker_id!r} was not sampled for round {step}")

    def submit(self, worker_id: str, step: int, weight: float, updates: dict[str, Update],
               buffers: list[torch.Tensor]) -> PushResult:
        try:
            screen(updates, self.config.clip_norm, self.config.reject_norm)
        except BaseException:
            for buffer in buffers:
                self._pool.give(buffer)
            raise
        return super().submit(worker_id, step, weight, updates, buffers)

    def _ready(self) -> bool:
        if not self._members.formed:
            return False
        live = self._members.live_workers()
        return bool(self._pushed) and (self._sampled & live) <= self._pushed

    def _close(self) -> int:
        missing = sorted(self._sampled - self._pushed)
        self.dropouts += [f"{client}@{self._round}" for client in missing]
        return super()._close()

    def tick(self) -> None:
        """Close or skip a round that ran past its timeout."""
        with self._lock:
            self._open_round()
            if self._round < 0 or time.monotonic() - self._round_opened < \
                    self.config.round_timeout_s:
                return
            needed = max(self.config.min_clients,
                         math.ceil(self.config.min_completion_rate * len(self._sampled)))
            if self._pushed and len(self._pushed) >= needed:
                log.warning("round %d timed out: closing with %d of %d sampled clients",
                            self._round, len(self._pushed), len(self._sampled))
                self._close()
                return
            log.warning("round %d skipped: %d of %d sampled clients reported, %d needed; the "
                        "global model is unchanged", self._round, len(self._pushed),
                        len(self._sampled), needed)
            self.dropouts += [f"{c}@{self._round}" for c in sorted(self._sampled - self._pushed)]
            self.skipped_rounds.append(self._round)
            for buffer in self._sum_buffers:
                self._pool.give(buffer)
            self._sums, self._sum_buffers, self._weights, self._pushed = {}, [], {}, set()
            self._opened_at = None
            self._store.apply({})  # the next round, from the same global model
