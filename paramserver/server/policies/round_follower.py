"""A follower shard's side of a sharded federated round (docs/wire.md section 5d).

When a federation's model is split over several shards, shard 0 (the leader) samples the
clients and decides how every round closes, exactly as a one-shard federation does. The
other shards (followers) hold each client's update for the open round without counting it;
a client pushes to the leader only once every follower holds its update. A follower closes
the round when a client forwards the leader's close (`RoundClose`): with exactly the updates
of the clients the leader counted, dropping the rest. So a client whose update missed one
shard is counted on none, and every shard applies the same clients' mean to its slice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from paramserver.errors import FailedPrecondition
from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.server.policies.base import ReceivedPush


def is_follower(plan_shards: int, shard_index: int) -> bool:
    """Whether this shard follows the leader's rounds (a sharded model, not shard 0)."""
    return plan_shards > 1 and shard_index > 0


class HeldUpdates:
    """The open round's updates on a follower, one per client, owned here until the round
    closes. Not thread-safe: the round policy holds its lock around calls."""

    def __init__(self, pool: BufferPool) -> None:
        self._pool = pool
        self._held: dict[str, ReceivedPush] = {}

    def __contains__(self, client: str) -> bool:
        return client in self._held

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, push: ReceivedPush) -> None:
        """Keep `push` (its pooled bytes move here) until the leader's close."""
        if push.worker_id in self._held:
            raise FailedPrecondition(f"client {push.worker_id!r} already pushed round "
                                     f"{push.step}")
        kept = PooledBuffers(self._pool)
        push.buffers.transfer(kept)
        self._held[push.worker_id] = dataclasses.replace(push, buffers=kept)

    def take(self, counted: Iterable[str], round_: int) -> list[ReceivedPush]:
        """The updates of `counted`, in that order; the others are dropped. Raises
        (changing nothing) if one is missing: the leader counted a client this shard never
        held, which the protocol rules out (a restarted follower lost them)."""
        counted = list(counted)
        missing = [c for c in counted if c not in self._held]
        if missing:
            raise FailedPrecondition(f"the leader counted {missing} in round {round_}, but "
                                     "this follower shard holds no update of theirs")
        pushes = [self._held.pop(c) for c in counted]
        self.discard()
        return pushes

    def discard(self) -> None:
        for push in self._held.values():
            push.buffers.release()
        self._held.clear()
