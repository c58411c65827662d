"""Pushing a sync step again when a shard discarded its aggregate (issue #14).

A sync server adds pushes to the step's one aggregate chunk by chunk; a push that fails
after its first chunk was added makes it discard the aggregate (docs/wire.md, "Push"). It
then answers every worker whose push it held ABORTED with a message starting
`step discarded: `, on the pull waiting for the step (or on a push in flight). The worker
still holds its gradient: it sends the step's pushes to that shard again, parts included,
with the very payloads it sent the first time (error feedback already counted them: they
are not encoded again), each as a new push (a new sequence: the ledger answered the first).
The pushes of a step are kept until its pull completes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from paramserver.codecs.streaming import Payload
from paramserver.errors import Aborted, StepDiscarded
from paramserver.types import PushResult, StepOptions, TensorSpec
from workers.connection import ServerConnection

log = logging.getLogger(__name__)
MAX_DISCARDS = 10  # discards of one step in a row before a worker gives up


@dataclass(frozen=True)
class SentPush:
    """One push (or part) as it was sent to one shard."""

    version: int
    specs: tuple[TensorSpec, ...]
    payloads: tuple[Payload, ...]  # a streamed one keeps the bytes it made for a re-push
    num_samples: int
    more_parts: bool
    options: StepOptions | None
    momentum_applied: bool

    def send(self, connection: ServerConnection) -> PushResult:
        return connection.push(self.version, self.specs, self.payloads, self.num_samples,
                               self.more_parts, self.options,
                               momentum_applied=self.momentum_applied)


class SentPushes:
    """Per shard, the pushes of the step in progress. Each shard's list is only touched by
    that shard's fan-out thread (or by the caller once every shard answered)."""

    def __init__(self, shards: int) -> None:
        self._sent: list[list[SentPush]] = [[] for _ in range(shards)]
        self.repushes = [0] * shards  # steps pushed again after a discard, per shard

    def send(self, shard: int, connection: ServerConnection, push: SentPush) -> PushResult:
        """Send `push` (kept with the step's others); if its step is discarded meanwhile,
        send the step again."""
        sent = self._sent[shard]
        if sent and sent[-1].version != push.version:
            sent.clear()  # a new step
        sent.append(push)
        try:
            return push.send(connection)
        except StepDiscarded as error:
            return self.send_again(shard, connection, error.message)

    def send_again(self, shard: int, connection: ServerConnection, why: str) -> PushResult:
        """Send every push of the step again, in order; the answer to the last."""
        if not self._sent[shard]:
            raise StepDiscarded(f"{why}; but no push of this step is held here to send again")
        for _ in range(MAX_DISCARDS):
            self.count_again(shard, connection.address, why)
            try:
                return _send_all(connection, self._sent[shard])
            except StepDiscarded as error:
                why = error.message
        raise StepDiscarded(f"{why} (pushed again {MAX_DISCARDS} times: giving up)")

    def count_again(self, shard: int, address: str, why: str) -> None:
        """Log and count a step pushed again: by `send_again`, or by the caller for a push
        discarded before it was kept here (a Step call's, sent again on the stream)."""
        log.warning("%s: %s; pushing the step again", address, why)
        self.repushes[shard] += 1

    def resend_before_pull(self, shard: int, connection: ServerConnection, why: str) -> None:
        """A pull answered `step discarded`: send the step again, then the caller pulls. A
        push the server answers ABORTED otherwise (the step closed without it meanwhile, a
        quorum step) is dropped, as the client drops any such push; the pull then goes on."""
        try:
            self.send_again(shard, connection, why)
        except StepDiscarded:
            raise
        except Aborted as error:
            log.info("%s: push dropped: %s", connection.address, error.message)

    def clear(self) -> None:
        """The step closed: its pushes are not needed again."""
        for sent in self._sent:
            sent.clear()


def _send_all(connection: ServerConnection, pushes: Sequence[SentPush]) -> PushResult:
    result = None
    for push in pushes:
        result = push.send(connection)
    assert result is not None
    return result
