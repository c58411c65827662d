"""A client's part in sharded federated rounds (docs/wire.md section 5d).

Shard 0 (the leader) samples the clients and closes each round; the other shards
(followers) hold each client's update and close the round as the leader did once a client
forwards them the leader's close. The client keeps the order that makes this consistent:
its update reaches every follower before the leader counts it, and it forwards the close
of each round it learns from the leader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from paramserver.errors import FailedPrecondition
from paramserver.types import Mode, PushResult, RoundClose, RoundJoin, Session
from workers.connection import ServerConnection
from workers.fan_out import ShardFanOut
from workers.shard_calls import ShardPush


def leads_rounds(session: Session, num_shards: int) -> bool:
    """A sharded federated model: shard 0 decides each round, the others follow."""
    return session.mode is Mode.FEDERATED and num_shards > 1


def join_round(connections: Sequence[ServerConnection], shards: ShardFanOut, round_: int,
               timeout_s: float | None) -> RoundJoin:
    """Wait for round >= round_ on the leader; forward its close of the round before (if
    sharded) to every follower."""
    joined = connections[0].join_round(round_, timeout_s)
    close = joined.last_close
    if close is not None and len(connections) > 1:
        shards.run(lambda shard: forward_close(connections, shard, close),
                   range(1, len(connections)))
    return joined


def forward_close(connections: Sequence[ServerConnection], shard: int,
                  close: RoundClose) -> None:
    """Give follower `shard` the leader's close; one that missed earlier closes (no client
    forwarded them) gets those first, from the leader's status."""
    connection = connections[shard]
    try:
        connection.join_round(close.round + 1, close=close)
    except FailedPrecondition:
        for earlier in connections[0].status().rounds:
            if earlier.round <= close.round:
                connection.join_round(earlier.round + 1, close=earlier)


def push_followers_first(shards: ShardFanOut, push_shard: Callable[[int], ShardPush],
                         leader_version: int) -> list[ShardPush]:
    """Push to every follower, then, if all of them hold the update, to the leader (shard
    0). Answers per shard, in shard order; an exception (a follower unreachable) leaves the
    leader untouched, so the update counts on no shard."""
    held = shards.run(push_shard, range(1, shards.num_shards))
    if any(p.aborted or p.rejoined for p in held):  # not on every follower: stop here
        dropped = ShardPush(PushResult(leader_version, applied=False), leader_version + 1,
                            aborted=True)
        return [dropped, *held]
    return [push_shard(0), *held]
