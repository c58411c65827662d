"""What every update policy (sync, async, SSP, federated rounds, FedBuff) implements.

A policy decides when complete, decoded pushes become a parameter update. The core hands
it one `ReceivedPush` at a time; the push's pooled buffers are owned by the push (released
when the core's request ends) unless the policy adopts them into an aggregate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from paramserver.codecs import Update
from paramserver.errors import FailedPrecondition
from paramserver.federated.privacy import PrivacyAccountant, PrivacyReport
from paramserver.federated.secagg.protocol import SecAggReply, SecAggRequest
from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.server.config import ServerConfig
from paramserver.server.limits import LongPoll
from paramserver.server.membership import Membership
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult, RoundClose, RoundJoin, StepOptions

Clock = Callable[[], float]


@dataclass(frozen=True, kw_only=True)
class ReceivedPush:
    """One worker's whole push for `step` (all parts merged), decoded."""

    worker_id: str
    step: int
    weight: float  # 1.0 for a mean, num_samples for weighted aggregation
    updates: dict[str, Update]
    buffers: PooledBuffers  # the pooled bytes the updates view
    momentum_applied: bool = False  # carries the server's momentum: apply with plain SGD
    options: StepOptions = field(default_factory=StepOptions)  # lr, clipping, inf/NaN found
    incarnation: int = 0  # the worker session's incarnation (0: not known)


@dataclass(frozen=True, kw_only=True)
class StepWait:
    """How long the open step has waited, and for which live workers."""

    waited_s: float = 0.0
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PolicyReport:
    """A policy's figures for `status`."""

    pending_pushes: int = 0
    clocks: dict[str, int] = field(default_factory=dict)  # SSP: pushes applied per worker
    max_lead: int = 0  # SSP: the largest lead any worker started a step with
    dropouts: tuple[str, ...] = ()  # federated: "client@round" that did not report
    skipped_rounds: tuple[int, ...] = ()  # federated: rounds closed without enough reports
    privacy: PrivacyReport | None = None  # federated with --dp: epsilon spent so far
    rounds: tuple[RoundClose, ...] = ()  # federated: the last rounds closed, oldest first


@dataclass(frozen=True, kw_only=True)
class PolicyContext:
    """What a policy is built from."""

    store: ParameterStore
    members: Membership
    pool: BufferPool
    config: ServerConfig
    clock: Clock = time.monotonic  # injectable, so timeout tests need no sleeps


class UpdatePolicy(Protocol):
    """Decides when pushed gradients become a parameter update."""

    def check_step(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        """Raise before any payload is read if a push for `step` cannot be accepted.
        `incarnation`: of the pushing session (sync tells a restarted process's push for
        a step its predecessor pushed from a second push)."""

    def submit(self, push: ReceivedPush) -> PushResult:
        """Take one complete, decoded push; raise (changing nothing) to refuse it."""

    def open_stream(self, worker_id: str, step: int, weight: float,
                    momentum_applied: bool, incarnation: int = 0) -> StreamedPush | None:
        """A push to add chunk by chunk (`server/inplace.py`), or None: this policy takes
        whole pushes only (`submit`). Raises as `check_step` does."""

    def members_changed(self) -> None:
        """Workers left or were evicted: a step that only waited for them may close now."""

    def wait_turn(self, worker_id: str, timeout_s: float, poll: LongPoll | None = None) -> None:
        """Block a worker's pull while it may not run ahead (SSP); others return at once.
        `poll.before_wait()` runs before each wait (long-poll slot, cancellation)."""

    def waiting_for(self) -> StepWait:
        """How long the open step has waited, and for which live workers (sync)."""

    def tick(self) -> None:
        """Periodic duty (federated rounds time out here)."""

    def join_round(self, worker_id: str, round_: int, timeout_s: float,
                   poll: LongPoll | None = None, close: RoundClose | None = None) -> RoundJoin:
        """Federated: the open round >= round_, and whether this worker is sampled; a
        follower shard first applies the leader's `close` of an earlier round."""

    def secure_aggregate(self, worker_id: str, request: SecAggRequest, timeout_s: float,
                         poll: LongPoll | None = None) -> SecAggReply:
        """Federated with --secure-aggregation: one stage's message, answered once the
        stage closed (`rounds.RoundPolicy`)."""

    def report(self) -> PolicyReport:
        """Figures for `status`."""

    def privacy_accountant(self) -> PrivacyAccountant | None:
        """Federated --dp: the accountant whose ledger a checkpoint holds (None without)."""


class StreamedPush(Protocol):
    """A push added to a step chunk by chunk as it arrives (sync: `sync.InPlacePush`)."""

    def add(self, name: str, start: int, values: torch.Tensor) -> None:
        """Add elements [start, start + len(values)) of tensor `name` (checked values)."""

    def read(self, name: str, start: int, count: int,
             fill: Callable[[torch.Tensor], None]) -> bool:
        """`fill(view)` writes and checks elements [start, start + count) of tensor `name`
        straight into the step's aggregate where no push wrote them yet, while no other push
        is being received; False (nothing done) otherwise: then `add` them. A `fill` that
        raises changes nothing."""

    def finish(self, names: list[str], options: StepOptions) -> PushResult:
        """Every chunk was added: count the push (it may close the step)."""

    def abort(self) -> None:
        """The push failed; if it added anything, the step's aggregate is discarded."""


class PolicyDefaults:
    """What a policy does about the optional duties when it has nothing to do for them."""

    def open_stream(self, worker_id: str, step: int, weight: float,
                    momentum_applied: bool, incarnation: int = 0) -> StreamedPush | None:
        return None

    def members_changed(self) -> None:
        return None

    def wait_turn(self, worker_id: str, timeout_s: float, poll: LongPoll | None = None) -> None:
        return None

    def waiting_for(self) -> StepWait:
        return StepWait()

    def tick(self) -> None:
        return None

    def join_round(self, worker_id: str, round_: int, timeout_s: float,
                   poll: LongPoll | None = None, close: RoundClose | None = None) -> RoundJoin:
        raise FailedPrecondition("this server does not run federated rounds (--mode "
                                 "federated or fedbuff)")

    def secure_aggregate(self, worker_id: str, request: SecAggRequest, timeout_s: float,
                         poll: LongPoll | None = None) -> SecAggReply:
        raise FailedPrecondition("this server does not run secure aggregation (--mode "
                                 "federated --secure-aggregation)")

    def report(self) -> PolicyReport:
        return PolicyReport()

    def privacy_accountant(self) -> PrivacyAccountant | None:
        return None
