"""Synchronous steps: one push from every live worker, aggregated, applied once.

A tensor's aggregate is the (weighted) mean over all the step's pushes, a push without it
counting as a zero gradient, as DDP averages over all ranks (`--unused-gradients skip`: over
the workers that pushed it); a tensor nobody pushed gets no gradient, which torch.optim
treats like `param.grad is None` (DDP leaves a globally unused parameter's grad alone too).
The step's options (rate, clipping, inf/NaN found) apply as `step_rules` says.

Membership is dynamic: the step closes once every *live* worker pushed (a worker evicted or
gone after pushing still counts; one that never pushed is not waited for; a live worker is
one that registered or pushed within `--member-idle-timeout`, never a mere handshake), or, with a
quorum K (backup workers, Chen et al. 2016), as soon as K pushes arrived. A push for a step
that already closed is ABORTED: the late worker pulls and catches up.
"""

from __future__ import annotations

import threading

from paramserver.server.config import UnusedGradients
from paramserver.server.policies.aggregate import StepAssembly
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyDefaults,
    PolicyReport,
    ReceivedPush,
    StepWait,
)
from paramserver.types import PushResult


class SyncPolicy(PolicyDefaults):
    """`_lock` guards the open step. Lock order: `_lock` before `store.lock`."""

    def __init__(self, context: PolicyContext) -> None:
        quorum = context.config.sync_quorum
        if quorum < 0:
            raise ValueError(f"--sync-quorum must be >= 0, got {quorum}")
        self._store = context.store
        self._members = context.members
        self._quorum = quorum
        self._lock = threading.Lock()
        self._step = StepAssembly(
            context.store, context.pool, context.clock,
            over_all_pushes=context.config.unused_gradients is UnusedGradients.ZERO,
            base_lr=context.config.optimizer.lr)

    def check_step(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        with self._lock:
            self._step.check(worker_id, step, incarnation)

    def submit(self, push: ReceivedPush) -> PushResult:
        with self._lock:
            self._step.add(push)
            if not self._ready():
                return PushResult(version=self._store.version, applied=False)
            return PushResult(version=self._step.close(), applied=True)

    def members_changed(self) -> None:
        with self._lock:
            if self._step.pushed and self._ready():
                self._step.close()

    def _ready(self) -> bool:
        if not self._members.formed:
            return False
        if self._quorum and len(self._step.pushed) >= self._quorum:
            return True
        return self._members.blocking_workers() <= self._step.pushed

    def waiting_for(self) -> StepWait:
        with self._lock:
            if self._step.opened_at is None:
                return StepWait()
            missing = self._members.blocking_workers() - self._step.pushed
            return StepWait(waited_s=self._step.waited_s(), missing=tuple(sorted(missing)))

    def report(self) -> PolicyReport:
        with self._lock:
            return PolicyReport(pending_pushes=len(self._step.pushed))
