"""Stale-synchronous parallel (Ho et al. 2013): pushes are applied as they arrive, but no
worker runs more than `staleness` steps ahead of the slowest live worker.

Each worker's clock counts its applied pushes. A worker's pull (which starts its next step)
waits while its clock exceeds the slowest live worker's by more than S; S=0 is lockstep like
sync, a large S is async. Dead workers are evicted from membership and stop holding anyone
back; a worker that joins starts at the slowest clock. `max_lead` records the largest lead
any worker ever started a step with, for tests and status.
"""

from __future__ import annotations

import threading
import time

from paramserver.errors import DeadlineExceeded
from paramserver.server.limits import LongPoll
from paramserver.server.policies.asynchronous import AsyncPolicy
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyDefaults,
    PolicyReport,
    ReceivedPush,
)
from paramserver.types import PushResult


class SspPolicy(PolicyDefaults):
    """Async application plus per-worker clocks; `_changed` guards the clocks."""

    def __init__(self, context: PolicyContext) -> None:
        staleness = context.config.staleness
        if staleness < 0:
            raise ValueError(f"--staleness must be >= 0, got {staleness}")
        self._apply = AsyncPolicy(context)  # no --max-staleness: S bounds the drift
        self.staleness = staleness
        self._members = context.members
        self._clock: dict[str, int] = {}
        self._changed = threading.Condition()
        self._max_lead = 0

    def check_step(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        self._apply.check_step(worker_id, step)

    def submit(self, push: ReceivedPush) -> PushResult:
        result = self._apply.submit(push)
        with self._changed:
            self._join(push.worker_id, self._members.blocking_workers())
            self._clock[push.worker_id] += 1
            self._changed.notify_all()
        return result

    def _slowest(self, live: set[str]) -> int:
        return min((self._clock.get(w, 0) for w in live if w in self._clock), default=0)

    def _join(self, worker_id: str, live: set[str]) -> int:
        if worker_id not in self._clock:
            self._clock[worker_id] = self._slowest(live)
        return self._clock[worker_id]

    def members_changed(self) -> None:
        live = self._members.live_workers()
        with self._changed:
            for gone in set(self._clock) - live:
                del self._clock[gone]
            self._changed.notify_all()

    def wait_turn(self, worker_id: str, timeout_s: float, poll: LongPoll | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                if not self._members.formed:  # re-forming after a restart
                    self._wait_until(deadline, worker_id, timeout_s, "the job to re-form", poll)
                    continue
                live = self._members.blocking_workers() | {worker_id}
                mine = self._join(worker_id, live)
                lead = mine - self._slowest(live)
                if lead <= self.staleness:
                    self._max_lead = max(self._max_lead, lead)
                    return
                self._wait_until(deadline, worker_id, timeout_s,
                                 f"its lead of {lead} steps over the slowest live worker to "
                                 f"shrink to the bound {self.staleness}", poll)

    def _wait_until(self, deadline: float, worker_id: str, timeout_s: float,
                    what: str, poll: LongPoll | None) -> None:
        """One bounded wait on `_changed` (held); DeadlineExceeded past the deadline. The
        wait is short, so a cancelled call (`poll`) ends within 0.25 s."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"worker {worker_id!r} waited {timeout_s:.1f}s for {what}")
        if poll is not None:
            poll.before_wait()
        self._changed.wait(min(remaining, 0.25))

    def report(self) -> PolicyReport:
        with self._changed:
            return PolicyReport(clocks=dict(self._clock), max_lead=self._max_lead)
