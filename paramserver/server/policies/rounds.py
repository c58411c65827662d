"""Federated rounds on a parameter server (FedAvg and friends, McMahan et al. 2017).

Round r starts from the global model at version r. When it opens, the server samples a
fraction of the live clients, reproducibly from (seed, r, client ids). Sampled clients
train locally and push their update (global - local) with their weight; the round closes
once every live sampled client reported, or at the round timeout with whoever reported if
that is enough (`min_clients`, `min_completion_rate`). Too few reports skip the round: the
version advances, the global model stays unchanged. The weighted mean of the updates is
applied by the server optimizer (SGD lr 1 = FedAvg; momentum = FedAvgM; Adam = FedAdam).
With --dp (DP-FedAvg, `paramserver.federated.privacy`), the round's sum gets Gaussian noise
(central) or holds the clients' noise shares (distributed), is divided by the number of
sampled clients, and is accounted; once the next round would exceed --target-epsilon, no
round opens again and JoinRound answers `finished`.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from paramserver.errors import FailedPrecondition
from paramserver.federated.privacy import RoundPrivacy
from paramserver.federated.sampling import sample_clients
from paramserver.federated.screening import screen
from paramserver.server.limits import LongPoll
from paramserver.server.policies.aggregate import StepAssembly
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyDefaults,
    PolicyReport,
    ReceivedPush,
    StepWait,
)
from paramserver.types import PushResult, RoundJoin

log = logging.getLogger(__name__)


class RoundPolicy(PolicyDefaults):
    """A synchronous step per round, whose members are the round's sampled clients.

    `_lock` guards the round and its step; lock order: `_lock` before `store.lock`.
    """

    def __init__(self, context: PolicyContext) -> None:
        self.config = context.config.federated
        self._store = context.store
        self._members = context.members
        self._clock = context.clock
        self._lock = threading.Lock()
        self._step = StepAssembly(context.store, context.pool, context.clock)
        self._round = -1
        self._sampled: frozenset[str] = frozenset()
        self._round_opened = 0.0
        self._dropouts: list[str] = []
        self._skipped_rounds: list[int] = []
        dp = context.config.dp
        self._privacy = RoundPrivacy(dp, self.config.clip_norm) if dp.on else None

    def _open_round(self) -> None:
        """Sample the current round's clients once the job is formed (caller holds _lock)."""
        version = self._store.version
        if self._round == version or not self._members.formed:
            return
        self._round, self._round_opened = version, self._clock()
        live = self._members.live_workers()
        self._sampled = sample_clients(live, self.config.fraction,
                                       self.config.min_clients, self.config.seed, version)
        if self._privacy is not None and not self._privacy.open(len(self._sampled), len(live)):
            log.warning("round %d not run: it would exceed --target-epsilon %g", version,
                        self._privacy.config.target_epsilon)
            self._sampled = frozenset()
            return
        log.info("round %d: sampled %d clients %s", version, len(self._sampled),
                 sorted(self._sampled))

    def join_round(self, worker_id: str, round_: int, timeout_s: float,
                   poll: LongPoll | None = None) -> RoundJoin:
        """Wait until round >= `round_` is open."""
        self._store.wait_for_version(round_, timeout_s, poll)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._open_round()
                if self._round >= 0:
                    return self._join_answer(worker_id)
            if time.monotonic() > deadline:
                raise FailedPrecondition("the federation has not formed yet: fewer clients "
                                         f"joined than --workers ({self._members.live_workers()})")
            if poll is not None:
                poll.before_wait()
            time.sleep(0.05)

    def _join_answer(self, worker_id: str) -> RoundJoin:
        sampled = worker_id in self._sampled
        if self._privacy is None:
            return RoundJoin(round=self._round, sampled=sampled, sampled_count=len(self._sampled))
        return RoundJoin(round=self._round, sampled=sampled, sampled_count=len(self._sampled),
                         dp_clip_norm=self._privacy.clip_norm,
                         dp_noise_std=self._privacy.client_noise_std(len(self._sampled)),
                         finished=self._privacy.finished)

    def check_step(self, worker_id: str, step: int) -> None:
        with self._lock:
            self._check(worker_id, step)

    def _check(self, worker_id: str, step: int) -> None:
        self._step.check(worker_id, step)
        self._open_round()
        if worker_id not in self._sampled:
            raise FailedPrecondition(f"client {worker_id!r} was not sampled for round {step}")

    def submit(self, push: ReceivedPush) -> PushResult:
        clip = self.config.clip_norm
        if self._privacy is not None:
            model = {t.name for t in self._store.require_layout().tensors}
            self._privacy.check(push.updates, model, push.momentum_applied)
            clip = self._privacy.clip_norm_for_screening
        screen(push.updates, clip, self.config.reject_norm)
        with self._lock:
            self._check(push.worker_id, push.step)
            self._step.add(push)
            if not self._ready():
                return PushResult(version=self._store.version, applied=False)
            return PushResult(version=self._close(), applied=True)

    def members_changed(self) -> None:
        with self._lock:
            if self._step.pushed and self._ready():
                self._close()

    def _ready(self) -> bool:
        if not self._members.formed:
            return False
        live = self._members.live_workers()
        return bool(self._step.pushed) and (self._sampled & live) <= self._step.pushed

    def _missing(self) -> list[str]:
        return [f"{client}@{self._round}" for client in sorted(self._sampled - self._step.pushed)]

    def _close(self) -> int:
        self._dropouts += self._missing()
        privacy, sampled, reported = self._privacy, len(self._sampled), len(self._step.pushed)
        if privacy is None:
            return self._step.close()
        return self._step.close(lambda sums: privacy.finish(sums, sampled, reported))

    def tick(self) -> None:
        """Close or skip a round that ran past its timeout."""
        with self._lock:
            self._open_round()
            if self._round < 0 or self._clock() - self._round_opened < \
                    self.config.round_timeout_s or self._budget_spent():
                return
            pushed = len(self._step.pushed)
            needed = max(self.config.min_clients,
                         math.ceil(self.config.min_completion_rate * len(self._sampled)))
            if pushed and pushed >= needed:
                log.warning("round %d timed out: closing with %d of %d sampled clients",
                            self._round, pushed, len(self._sampled))
                self._close()
                return
            log.warning("round %d skipped: %d of %d sampled clients reported, %d needed; the "
                        "global model is unchanged", self._round, pushed, len(self._sampled),
                        needed)
            self._dropouts += self._missing()
            self._skipped_rounds.append(self._round)
            self._step.skip()  # the next round, from the same global model

    def _budget_spent(self) -> bool:
        return self._privacy is not None and self._privacy.finished

    def waiting_for(self) -> StepWait:
        with self._lock:
            if self._step.opened_at is None:
                return StepWait()
            missing = (self._sampled & self._members.live_workers()) - self._step.pushed
            return StepWait(waited_s=self._step.waited_s(), missing=tuple(sorted(missing)))

    def report(self) -> PolicyReport:
        with self._lock:
            return PolicyReport(pending_pushes=len(self._step.pushed),
                                dropouts=tuple(self._dropouts),
                                skipped_rounds=tuple(self._skipped_rounds),
                                privacy=self._privacy.report() if self._privacy else None)
