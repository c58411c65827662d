"""A federated round under secure aggregation, on the server: the four stages of
`paramserver.federated.secagg` with their waits and timeouts.

Each stage expects the clients that finished the previous one (ADVERTISE: the round's
sampled clients) and closes once every live one of them answered, or `timeout_s` after it
opened (the round timeout, per stage); the answer to a stage is given once it closed. A
client missing ADVERTISE or SHARE_KEYS is left out of the round; one missing MASKED_INPUT
is a dropout whose pairwise masks are removed with its revealed mask key; one missing
UNMASK after masking still counts (its input arrived). The round fails - the global model
unchanged - when fewer than t (or than the round's min-clients rule) masked inputs arrive, or
some secret gets fewer than t shares. Not thread-safe: `RoundPolicy` holds its lock around
every call.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from paramserver.errors import Aborted, FailedPrecondition, InvalidArgument
from paramserver.federated.secagg.aggregator import Aggregation
from paramserver.federated.secagg.protocol import (
    SecAggAborted,
    SecAggReply,
    SecAggRequest,
    Stage,
)
from paramserver.server.config import ServerConfig
from paramserver.types import Mode, ModelLayout, Role

log = logging.getLogger(__name__)


def check_secure_aggregation(config: ServerConfig, worker_id: str, role: Role,
                             offered: bool) -> None:
    """A worker and the server must agree on secure aggregation, as on a codec
    (FAILED_PRECONDITION); observers never take part."""
    if role is not Role.WORKER:
        return
    wanted = config.federated.secure_aggregation and config.mode is Mode.FEDERATED
    if wanted and not offered:
        raise FailedPrecondition(f"this server runs --secure-aggregation: client {worker_id!r} "
                                 "must offer it too (client --secure-aggregation)")
    if offered and not wanted:
        raise FailedPrecondition(f"client {worker_id!r} offers secure aggregation, but this "
                                 "server was not started with --secure-aggregation (--mode "
                                 "federated)")


class SecureRound:
    """One round's stages; `outcome` (the weighted mean) or `failure` once `finished`."""

    def __init__(self, aggregation: Aggregation, sampled: frozenset[str], needed: int,
                 opened: float, timeout_s: float) -> None:
        self.aggregation = aggregation
        self.stage = Stage.ADVERTISE
        self.sampled = self.expected = sampled
        self.answered: set[str] = set()  # in the open stage
        self.took: dict[Stage, set[str]] = {}  # every stage's answers, for retries
        self.needed = needed  # masked inputs the round needs (--min-clients and friends)
        self.opened, self.timeout_s = opened, timeout_s
        self.finished = False
        self.failure = ""
        self.mean: np.ndarray | None = None
        self.weight = 0  # of the clients whose inputs are in the mean
        self.version, self.applied = 0, False  # set by the policy once it closed the round

    def submit(self, client: str, request: SecAggRequest) -> None:
        """Take one client's message for the open stage; raises (changing nothing) if it
        does not fit. A message for a stage the client already answered is not taken again
        (a retry after a deadline: the caller just waits for the answer)."""
        if client in self.took.get(request.stage, ()):
            return
        round_ = self.aggregation.round
        if self.finished or request.stage < self.stage:
            raise Aborted(f"{request.stage.name} of round {round_} closed without client "
                          f"{client!r}; join the next round")
        if request.stage > self.stage:
            raise FailedPrecondition(f"{request.stage.name} for round {round_}, but the round "
                                     f"is at {self.stage.name}")
        if client not in self.expected:
            raise Aborted(f"client {client!r} missed an earlier stage of round {round_}; join "
                          "the next round")
        try:
            self._take(client, request)
        except SecAggAborted as error:
            raise InvalidArgument(str(error)) from None
        self.answered.add(client)
        self.took.setdefault(request.stage, set()).add(client)

    def _take(self, client: str, request: SecAggRequest) -> None:
        a = self.aggregation
        if request.stage is Stage.ADVERTISE:
            if request.keys is None or request.keys.client_id != client:
                raise SecAggAborted("ADVERTISE carries the client's own keys")
            a.advertise(request.keys)
        elif request.stage is Stage.SHARE_KEYS:
            a.share_keys(client, request.sealed)
        elif request.stage is Stage.MASKED_INPUT:
            if len(request.masked) != 4 * a.length:
                raise SecAggAborted(f"a masked input is {a.length} uint32 ({4 * a.length} "
                                    f"bytes), got {len(request.masked)} bytes")
            a.masked_input(client, np.frombuffer(request.masked, dtype="<u4").astype(np.uint32))
        else:
            a.unmask(client, request.revealed)

    def advance(self, live: set[str], now: float) -> bool:
        """Close the open stage if it is complete or timed out; True when this finished the
        round (then `mean` or `failure` is set)."""
        if self.finished:
            return False
        waiting = (self.expected & live) - self.answered
        if waiting and now - self.opened < self.timeout_s:
            return False
        log.info("round %d: %s closed with %d of %d after %.3f s", self.aggregation.round,
                 self.stage.name, len(self.answered), len(self.expected), now - self.opened)
        try:
            self._close(now)
        except SecAggAborted as error:
            self.failure, self.finished = str(error), True
        return self.finished

    def _close(self, now: float) -> None:
        a = self.aggregation
        if self.stage is Stage.ADVERTISE:
            a.close_advertise()
        elif self.stage is Stage.MASKED_INPUT:
            if len(a.masked) < self.needed:
                raise SecAggAborted(f"{len(a.masked)} masked inputs arrived, "
                                    f"{self.needed} needed")
            a.close_masked()
        elif self.stage is Stage.UNMASK:
            self.mean, self.weight = a.sum()
            self.finished = True
            return
        self.expected, self.answered = frozenset(self.answered), set()
        self.stage, self.opened = Stage(self.stage + 1), now

    def reply(self, client: str, stage: Stage) -> SecAggReply | None:
        """The answer to `client`'s message of `stage`, or None while the stage is open."""
        if self.finished and self.failure:
            raise Aborted(f"secure-aggregation round {self.aggregation.round} failed: "
                          f"{self.failure}; the global model is unchanged")
        if self.stage <= stage and not self.finished:
            return None
        a = self.aggregation
        if stage is Stage.ADVERTISE:
            return SecAggReply(params=a.params_for(client))
        if stage is Stage.SHARE_KEYS:
            return SecAggReply(inbox=a.inbox(client))
        if stage is Stage.MASKED_INPUT:
            return SecAggReply(survivors=tuple(sorted(a.survivors)))
        return SecAggReply(version=self.version, applied=self.applied)

    def dropouts(self) -> list[str]:
        """Sampled clients whose masked input never arrived."""
        return sorted(self.sampled - set(self.aggregation.masked))


def split_vector(mean: np.ndarray, layout: ModelLayout) -> dict[str, torch.Tensor]:
    """The flat weighted mean as one flat tensor per layout entry, in layout order."""
    out, start = {}, 0
    for spec in layout.tensors:
        out[spec.name] = torch.from_numpy(mean[start:start + spec.numel].copy()).to(spec.dtype)
        start += spec.numel
    return out


def vector_length(layout: ModelLayout) -> int:
    return sum(spec.numel for spec in layout.tensors)
