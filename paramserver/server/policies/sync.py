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

import logging
import threading
from collections.abc import Callable

import torch

from paramserver.errors import StepDiscarded
from paramserver.server.config import UnusedGradients
from paramserver.server.limits import LongPoll
from paramserver.server.policies.aggregate import StepAssembly
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyDefaults,
    PolicyReport,
    ReceivedPush,
    StepWait,
)
from paramserver.types import PushResult, StepOptions

log = logging.getLogger(__name__)


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
            return self._close_if_ready()

    def _close_if_ready(self) -> PushResult:
        if not self._ready():
            return PushResult(version=self._store.version, applied=False)
        return PushResult(version=self._step.close(), applied=True)

    def open_stream(self, worker_id: str, step: int, weight: float,
                    momentum_applied: bool, incarnation: int = 0) -> InPlacePush:
        with self._lock:
            generation = self._step.begin_stream(worker_id, step, incarnation)
        return InPlacePush(self, generation, worker_id, step, weight, momentum_applied,
                           incarnation)

    def wait_turn(self, worker_id: str, timeout_s: float, poll: LongPoll | None = None) -> None:
        """A pull waiting for the next version ends ABORTED (`StepDiscarded`) while this
        worker's push of the open step was discarded and not pushed again."""
        if poll is not None:
            poll.guard = lambda: self._require_kept(worker_id)

    def _require_kept(self, worker_id: str) -> None:
        # Runs under the store's lock: reads one frozenset, takes no lock of ours.
        if worker_id in self._step.discarded:
            step = self._store.version
            raise StepDiscarded(f"step {step}: its aggregate, which held this worker's push, "
                                f"was discarded (a push failed after adding to it); push "
                                f"step {step} again")

    def members_changed(self) -> None:
        with self._lock:
            if self._step.pushed and self._ready():
                self._step.close()

    def _ready(self) -> bool:
        if not self._members.formed or self._step.streams:
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


class InPlacePush:
    """One push being added to the open step chunk by chunk (`server/inplace.py`). If it
    fails after its first add, the step's aggregate is discarded: every worker that pushed
    the step is answered `StepDiscarded` and pushes it again, so the step is applied once,
    with every gradient, or not at all."""

    def __init__(self, policy: SyncPolicy, generation: int, worker_id: str, step: int,
                 weight: float, corrected: bool, incarnation: int = 0) -> None:
        self._policy = policy
        self._generation = generation
        self._worker_id, self._step, self._incarnation = worker_id, step, incarnation
        self._weight, self._corrected = weight, corrected
        self._open = True
        self.added = False

    def add(self, name: str, start: int, values: torch.Tensor) -> None:
        with self._policy._lock:
            self._policy._step.add_chunk(self._generation, name, start, values, self._weight,
                                         self._corrected)
        self.added = True

    def read(self, name: str, start: int, count: int,
             fill: Callable[[torch.Tensor], None]) -> bool:
        with self._policy._lock:
            # Only where the step waits for this push alone: with two workers pushing, reading
            # the first push straight into the sum made W=2 rounds over shm slower (186-206
            # vs 171-176 ms, benchmarks/RESULTS.md; not understood), W=1 no slower.
            if len(self._policy._members.blocking_workers()) > 1:
                return False
            done = self._policy._step.read_chunk(self._generation, name, start, count, fill,
                                                 self._weight, self._corrected)
        self.added = self.added or done
        return done

    def finish(self, names: list[str], options: StepOptions) -> PushResult:
        policy = self._policy
        with policy._lock:
            self._open = False
            try:
                policy._step.end_stream(self._generation, self._worker_id, self._step, names,
                                        self._weight, self._corrected, options,
                                        self._incarnation)
            except Exception:
                self._discard()
                raise
            return policy._close_if_ready()

    def abort(self) -> None:
        """The push failed: discard the step's aggregate if this push added to it."""
        with self._policy._lock:
            if self._open:
                self._open = False
                self._policy._step.streams -= 1
                self._discard()

    def _discard(self) -> None:
        """(Under the policy's lock.) The step waits for one stream less either way."""
        policy = self._policy
        if self.added and self._generation == policy._step.generation:
            log.warning("step %d: a push of %r failed after adding to the aggregate; "
                        "discarded it, workers %s push the step again", self._step,
                        self._worker_id, sorted(policy._step.pushed))
            policy._step.discard()
            policy._store.wake()
        elif policy._step.pushed and policy._ready():
            policy._step.close()
