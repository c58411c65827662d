"""Federated rounds on a parameter server (FedAvg and friends, McMahan et al. 2017).

Round r starts from the global model at version r. When it opens, the server samples a
fraction of the live clients, reproducibly from (seed, r, client ids). Sampled clients
train locally and push their update (global - local) with their weight; the round closes
once every live sampled client reported, or at the round timeout with whoever reported if
that is enough (`min_clients`, `min_completion_rate`). Too few reports skip the round: the
version advances, the global model stays unchanged. The weighted mean of the updates is
applied by the server optimizer (SGD lr 1 = FedAvg; momentum = FedAvgM; Adam = FedAdam).

Under `--secure-aggregation` clients send no plain pushes: the round runs the stages of
`secure_rounds.SecureRound` instead (each stage timing out after the round timeout), and
the server applies the unmasked weighted mean, or skips the round when it failed.

The round's updates are summed in client-id order whatever order they arrive in (an early
one waits for its predecessors; `aggregate.InOrder`), so the same clients' updates give a
bit-identical model: float addition is not associative, and an arrival-order sum let
thread timing change the last bits of every round (issue #17).

With --dp (DP-FedAvg, `paramserver.federated.privacy`), the round's sum gets Gaussian noise
(central) or holds the clients' noise shares (distributed), is divided by the number of
sampled clients, and is accounted; once the next round would exceed --target-epsilon, no
round opens again and JoinRound answers `finished`. The accountant's ledger is checkpointed
(`privacy_accountant`, `federated.privacy_ledger`): a restart goes on from the epsilon spent.

On a sharded model, shard 0 leads the rounds and the other shards follow its closes
(`round_follower`, docs/wire.md section 5d).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

import torch

from paramserver.errors import Aborted, DeadlineExceeded, FailedPrecondition
from paramserver.federated.privacy import PrivacyAccountant, RoundPrivacy
from paramserver.federated.sampling import sample_clients
from paramserver.federated.screening import screen
from paramserver.federated.secagg.aggregator import Aggregation
from paramserver.federated.secagg.protocol import SecAggReply, SecAggRequest
from paramserver.server.limits import LongPoll
from paramserver.server.policies.aggregate import StepAssembly
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyDefaults,
    PolicyReport,
    ReceivedPush,
    StepWait,
)
from paramserver.server.policies.round_follower import HeldUpdates, is_follower
from paramserver.server.policies.secure_rounds import SecureRound, split_vector, vector_length
from paramserver.types import Aggregation as AggregationMode
from paramserver.types import PushResult, RoundClose, RoundJoin

log = logging.getLogger(__name__)
KEPT_CLOSES = 64  # rounds listed in status, and searched for a JoinRound's last_close


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
        self._held = HeldUpdates(context.pool)  # a follower shard's open round
        self._closes: deque[RoundClose] = deque(maxlen=KEPT_CLOSES)
        self._uniform = context.config.aggregation is AggregationMode.MEAN
        self._secure: SecureRound | None = None  # --secure-aggregation: this round's stages
        self._changed = threading.Condition(self._lock)  # a secure stage closed

    def _sharded(self) -> bool:
        plan = self._store.plan
        return plan is not None and plan.num_shards > 1

    def _follower(self) -> bool:
        plan = self._store.plan
        return plan is not None and is_follower(plan.num_shards, self._store.shard_index)

    def _open_round(self) -> None:
        """Sample the current round's clients once the job is formed (caller holds _lock)."""
        version = self._store.version
        if self._round == version:
            return
        if self._follower():  # the leader samples; its close says whom
            self._round, self._round_opened, self._sampled = version, self._clock(), frozenset()
            return
        if not (self._members.formed or self.config.population):
            return
        self._round, self._round_opened = version, self._clock()
        population = self._population()
        self._sampled = sample_clients(population, self.config.fraction,
                                       self.config.min_clients, self.config.seed, version)
        self._step.in_order(sorted(self._sampled))  # the same sum, whoever pushes first
        if self._privacy is not None and not self._privacy.open(len(self._sampled),
                                                                  len(population), version):
            log.warning("round %d not run: it would exceed --target-epsilon %g", version,
                        self._privacy.config.target_epsilon)
            self._sampled = frozenset()
            return
        log.info("round %d: sampled %d clients %s", version, len(self._sampled),
                 sorted(self._sampled))

    def join_round(self, worker_id: str, round_: int, timeout_s: float,
                   poll: LongPoll | None = None, close: RoundClose | None = None) -> RoundJoin:
        """Wait until round >= `round_` is open (a follower first applies `close`)."""
        if close is not None:
            with self._lock:
                self._follow(close)
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
        sampled, last_close = worker_id in self._sampled, self._close_of(self._round - 1)
        if self._privacy is None:
            return RoundJoin(round=self._round, sampled=sampled, sampled_count=len(self._sampled),
                             last_close=last_close)
        return RoundJoin(round=self._round, sampled=sampled, sampled_count=len(self._sampled),
                         last_close=last_close, dp_clip_norm=self._privacy.clip_norm,
                         dp_noise_std=self._privacy.client_noise_std(len(self._sampled)),
                         finished=self._privacy.finished)

    def check_step(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        with self._lock:
            self._check(worker_id, step)

    def _check(self, worker_id: str, step: int) -> None:
        self._step.check(worker_id, step)
        self._open_round()
        if self._follower():
            if worker_id in self._held:
                raise FailedPrecondition(f"client {worker_id!r} already pushed round {step}")
            return
        if worker_id not in self._sampled:
            raise FailedPrecondition(f"client {worker_id!r} was not sampled for round {step}")

    def submit(self, push: ReceivedPush) -> PushResult:
        if self.config.secure_aggregation:
            raise FailedPrecondition("this server runs --secure-aggregation: clients send "
                                     "masked inputs (SecureAggregate), never plain updates")
        clip = self.config.clip_norm
        if self._privacy is not None:
            if self._sharded():  # each shard would clip and noise only its slice
                raise FailedPrecondition("--dp runs on one server: a sharded federation "
                                         "would clip and add noise per shard; start one shard")
            model = {t.name for t in self._store.require_layout().tensors}
            self._privacy.check(push.updates, model, push.momentum_applied)
            clip = self._privacy.clip_norm_for_screening
        screen(push.updates, clip, self.config.reject_norm)
        with self._lock:
            self._check(push.worker_id, push.step)
            if self._follower():  # held until the leader's close says whether it counts
                self._held.hold(push)
                return PushResult(version=self._store.version, applied=False)
            self._step.add(push)
            if not self._ready():
                return PushResult(version=self._store.version, applied=False)
            return PushResult(version=self._close(), applied=True)

    def members_changed(self) -> None:
        with self._lock:
            self._advance_secure()
            if self._step.pushed and self._ready():
                self._close()

    def _population(self) -> set[str]:
        if self.config.population:
            return {f"client-{i}" for i in range(self.config.population)}
        return self._members.live_workers()

    def _ready(self) -> bool:
        if not (self._members.formed or self.config.population):
            return False
        awaited = (self._sampled if self.config.population  # not connected yet: still due
                   else self._sampled & self._members.live_workers())
        return bool(self._step.pushed) and awaited <= self._step.pushed

    def _missing(self) -> list[str]:
        return [f"{client}@{self._round}" for client in sorted(self._sampled - self._step.pushed)]

    def _close(self) -> int:
        self._dropouts += self._missing()
        self._record(skipped=False)
        privacy, sampled, reported = self._privacy, len(self._sampled), len(self._step.pushed)
        if privacy is None:
            return self._step.close()
        return self._step.close(lambda sums: privacy.finish(sums, sampled, reported))

    def _record(self, skipped: bool) -> None:
        self._closes.append(RoundClose(round=self._round, sampled=tuple(sorted(self._sampled)),
                                       counted=tuple(sorted(self._step.pushed)),
                                       skipped=skipped))

    def _close_of(self, round_: int) -> RoundClose | None:
        """The leader's record of how `round_` closed, which clients forward to followers."""
        if not self._sharded() or self._follower():
            return None
        return next((c for c in reversed(self._closes) if c.round == round_), None)

    def _follow(self, close: RoundClose) -> None:
        """A follower closes its open round as the leader did (caller holds _lock)."""
        if not self._follower():
            raise FailedPrecondition("only a follower shard (index > 0 of a sharded model) "
                                     "takes a round's close")
        version = self._store.version
        if close.round < version:
            return  # applied already (every client forwards it)
        if close.round > version:
            raise FailedPrecondition(f"this shard is at round {version}: forward the "
                                     f"leader's close of round {version} first")
        self._open_round()
        pushes = self._held.take(() if close.skipped else close.counted, close.round)
        self._sampled = frozenset(close.sampled)
        self._dropouts += [f"{client}@{close.round}"
                           for client in sorted(self._sampled - set(close.counted))]
        self._closes.append(close)
        if not pushes:
            self._skipped_rounds.append(close.round)
            self._step.skip()
            return
        for push in pushes:
            self._step.add(push)
            push.buffers.release()  # what the aggregate did not adopt
        self._step.close()

    def tick(self) -> None:
        """Close or skip a round that ran past its timeout."""
        with self._lock:
            self._open_round()
            if self._follower():
                return  # the leader times rounds out; its close comes through the clients
            if self._round < 0 or self._clock() - self._round_opened < \
                    self.config.round_timeout_s or self._budget_spent():
                return
            if self._secure is not None and self._secure.aggregation.round == self._round:
                self._advance_secure()  # its stages time out one by one
                return
            pushed = len(self._step.pushed)
            needed = self._needed()
            if pushed and pushed >= needed:
                log.warning("round %d timed out: closing with %d of %d sampled clients",
                            self._round, pushed, len(self._sampled))
                self._close()
                return
            log.warning("round %d skipped: %d of %d sampled clients reported, %d needed; the "
                        "global model is unchanged", self._round, pushed, len(self._sampled),
                        needed)
            self._dropouts += self._missing()
            self._record(skipped=True)
            self._skipped_rounds.append(self._round)
            self._step.skip()  # the next round, from the same global model

    def _budget_spent(self) -> bool:
        return self._privacy is not None and self._privacy.finished

    def _needed(self) -> int:
        """Reports a round needs: --min-clients, and --min-completion-rate of the sampled."""
        return max(self.config.min_clients,
                   math.ceil(self.config.min_completion_rate * len(self._sampled)))

    # ---- secure aggregation (issue #17) ------------------------------------------------

    def secure_aggregate(self, worker_id: str, request: SecAggRequest, timeout_s: float,
                         poll: LongPoll | None = None) -> SecAggReply:
        """Take one client's message for a stage of the open round and answer it once the
        stage closed (a repeated message is not taken twice: it only waits again)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self._open_round()
            if not self.config.secure_aggregation:
                raise FailedPrecondition("this server was not started with "
                                         "--secure-aggregation")
            if self._sharded():  # the masks span the whole update vector
                raise FailedPrecondition("--secure-aggregation runs on one server, not on a "
                                         "sharded federation; start one shard")
            if request.round != self._round:
                raise Aborted(f"round {request.round} is not open (the server is at round "
                              f"{self._round}); join the next round")
            if worker_id not in self._sampled:
                raise FailedPrecondition(f"client {worker_id!r} was not sampled for round "
                                         f"{request.round}")
            secure = self._secure_round()
            secure.submit(worker_id, request)
            self._advance_secure()
            while (reply := secure.reply(worker_id, request.stage)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"{request.stage.name} of round {request.round} "
                                           "is still open; send the same message again")
                if poll is not None:
                    poll.before_wait()
                self._changed.wait(min(remaining, 0.25))
                self._advance_secure()
            return reply

    def _secure_round(self) -> SecureRound:
        """The open round's stages, created by its first message (the model is registered
        by then: its layout sizes the vectors)."""
        if self._secure is None or self._secure.aggregation.round != self._round:
            assert self._store.layout is not None
            aggregation = Aggregation(self._round, vector_length(self._store.layout),
                                      self.config.secagg_clip, self.config.secagg_threshold,
                                      self.config.seed, uniform=self._uniform)
            self._secure = SecureRound(aggregation, self._sampled, self._needed(),
                                       self._clock(), self.config.round_timeout_s)
        return self._secure

    def _advance_secure(self) -> None:
        """Close the open stage if it is due; apply or skip the round once it finished."""
        secure = self._secure
        if secure is None or secure.aggregation.round != self._round:
            return
        if secure.advance(self._members.live_workers(), self._clock()):
            self._dropouts += [f"{client}@{self._round}" for client in secure.dropouts()]
            if secure.mean is None:
                log.warning("round %d skipped: secure aggregation failed (%s); the global "
                            "model is unchanged", self._round, secure.failure)
                self._skipped_rounds.append(self._round)
                secure.version = self._step.skip()
            else:
                secure.version = self._store.apply(self._secure_means(secure))
                secure.applied = True
        self._changed.notify_all()

    def _secure_means(self, secure: SecureRound) -> dict[str, torch.Tensor]:
        """The round's update: the unmasked weighted mean, or under DP the sum (with the
        central noise) over the number of sampled clients, accounted like a plain round."""
        assert self._store.layout is not None and secure.mean is not None
        if self._privacy is None:
            return split_vector(secure.mean, self._store.layout)
        sums = split_vector(secure.mean * secure.weight, self._store.layout)
        divisors = self._privacy.finish(sums, len(self._sampled), len(secure.aggregation.masked))
        return {name: total / divisors[name] for name, total in sums.items()}

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
                                privacy=self._privacy.report() if self._privacy else None,
                                rounds=tuple(self._closes))

    def privacy_accountant(self) -> PrivacyAccountant | None:
        return self._privacy.accountant if self._privacy is not None else None
