"""A step in one call per shard (issue #14): the client side of the Step RPC.

A 40 KB model's step on the streams costs a push stream and a pull stream per shard; the
bare gRPC round of those messages alone was 4.5x a unary echo of the same bytes. Where a
shard offers the Step call (`Session.step_call_bytes` > 0) and the step's push payload and
the shard's parameters each fit min(that, `ParameterClient.step_call_bytes`), the shard's
push and pull travel as one unary call; any other shard (or a push that encodes larger)
pushes and pulls on the streams within the same fan-out task. Records, codecs, error
feedback, the exactly-once sequence and the drop/rejoin rules are those of the streams.

`OneCallSteps` is a mixin of `ParameterClient`: it adds the per-shard orchestration and
uses the client's own per-shard calls, declared below for the type checker.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from paramserver.codecs.streaming import Payload
from paramserver.errors import Aborted, SessionExpired, StepDiscarded
from paramserver.types import PullHeader, PullRequest, PushResult, Session
from workers.connection import ServerConnection
from workers.fan_out import ShardFanOut
from workers.payloads import DeltaPullDecoder, PullDecoder
from workers.repush import SentPushes
from workers.routes import ShardRoutes
from workers.shard_calls import ShardPull, ShardPush, StepPush

STEP_CALL_BYTES = 1 << 20  # the client's default bound (the server's default offer too)


class StepCallFetch:
    """A pull `fetch` for `ParameterClient._pull_into` that carries the shard's push along:
    one Step call; `result` holds the push's answer once it returned."""

    def __init__(self, connection: ServerConnection, version: int, step: StepPush,
                 shard: int, payloads: list[Payload], momentum_applied: bool) -> None:
        self._call = functools.partial(
            connection.step, version, [r.stored for r in step.routes[shard]], payloads,
            num_samples=step.num_samples, options=step.options,
            momentum_applied=momentum_applied)
        self.result: PushResult | None = None

    def __call__(self, request: PullRequest,
                 decoder: PullDecoder | DeltaPullDecoder) -> PullHeader:
        self.result, header = self._call(request, decoder.sink, decoder.on_header)
        return header


class OneCallSteps:
    """`ParameterClient.step` for shards that offer the Step call."""

    if TYPE_CHECKING:  # the client's state and per-shard calls this mixin uses
        connections: Sequence[ServerConnection]
        sessions: list[Session]
        versions: list[int]
        step_call_bytes: int
        dense_bytes_pushed: int
        _shards: ShardFanOut
        _routes: ShardRoutes | None
        _sent: SentPushes

        @property
        def _stepwise(self) -> bool: ...

        def _encode(self, shard: int, step: StepPush) -> list[Payload]: ...
        def _push_shard(self, shard: int, step: StepPush,
                        payloads: list[Payload] | None = None) -> ShardPush: ...
        def _dropped(self, shard: int, version: int,
                     error: SessionExpired | Aborted) -> ShardPush: ...
        def _pull_shard(self, shard: int, min_version: int, targets: dict[str, np.ndarray],
                        timeout_s: float | None) -> ShardPull: ...
        def _pull_into(self, shard: int, min_version: int, targets: dict[str, np.ndarray],
                       timeout_s: float | None, fetch: StepCallFetch | None = None) -> int: ...
        def _pull_targets(self) -> dict[str, np.ndarray]: ...
        def _pulled(self, pulls: Sequence[ShardPull]) -> None: ...
        def _merge(self, pushes: dict[int, ShardPush]) -> None: ...
        def _momentum_applied(self, shard: int) -> bool: ...
        def _pushed_shards(self) -> list[bool]: ...

    def _step_call_limit(self, shard: int) -> int:
        """The most bytes a Step call to `shard` may carry each way; 0: not offered."""
        offered = self.sessions[shard].step_call_bytes
        if self._routes is None or min(offered, self.step_call_bytes) <= 0:
            return 0
        shard_nbytes = sum(r.nbytes for r in self._routes.routes[shard])
        limit = min(offered, self.step_call_bytes)
        return limit if shard_nbytes <= limit else 0

    def _one_call_step(self, step: StepPush) -> list[PushResult]:
        """Every shard's push and pull in one fan-out task each (a Step call where it fits);
        the answers merged as `push` and `pull` merge theirs."""
        targets, wanted = self._pull_targets(), self._pushed_shards()
        with torch.no_grad():
            answers = self._shards.run(functools.partial(self._step_shard, step=step,
                                                         targets=targets, wanted=wanted))
            pushes = {i: push for i, (push, _) in enumerate(answers) if push is not None}
            self._merge(pushes)
            self._pulled([pull for _, pull in answers])
        self.dense_bytes_pushed += sum(r.nbytes for i in pushes for r in step.routes[i])
        return [push.result for push in pushes.values()]

    def _step_shard(self, shard: int, step: StepPush, targets: dict[str, np.ndarray],
                    wanted: list[bool]) -> tuple[ShardPush | None, ShardPull]:
        """One shard's push and pull: one Step call when it fits, else the two streams. A
        push the shard drops (rejoin, ABORTED) is followed by a pull on the stream; one
        whose step was discarded (`workers.repush`) is pushed again on the stream. A shard
        at the job's end (`shard_calls.pushed_shards`) is only pulled."""
        if not wanted[shard]:
            return None, self._pull_shard(shard, self.versions[shard], targets, None)
        payloads, version = self._encode(shard, step), self.versions[shard]
        limit = self._step_call_limit(shard)
        if not limit or sum(p.nbytes for p in payloads) > limit:
            push = self._push_shard(shard, step, payloads)
            return push, self._pull_shard(shard, push.target, targets, None)
        fetch = StepCallFetch(self.connections[shard], version, step, shard, payloads,
                              self._momentum_applied(shard))
        try:
            pulled = self._pull_into(shard, version + 1 if self._stepwise else 0, targets,
                                     None, fetch)
        except StepDiscarded as error:  # the same payloads: error feedback counted them once
            self._sent.count_again(shard, self.connections[shard].address, error.message)
            push = self._push_shard(shard, step, payloads)
            return push, self._pull_shard(shard, push.target, targets, None)
        except (SessionExpired, Aborted) as error:
            push = self._dropped(shard, version, error)
            return push, self._pull_shard(shard, push.target, targets, None)
        assert fetch.result is not None
        target = version + 1 if self._stepwise else fetch.result.version
        return ShardPush(fetch.result, target), ShardPull(pulled)
