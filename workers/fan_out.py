"""Run one call per shard concurrently and collect the per-shard results in order; the
records a shard's call answers with."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ShardFanOut:
    """A thread per shard. `run(call, shards)` returns `[call(s) for s in shards]`, computed
    concurrently; the first exception raised by a call is raised here.

    Calls run on pool threads at the same time, so a call may write only its own shard's
    state; anything shared (counters, totals) goes into its result, and the caller merges
    the results once `run` returns.
    """

    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards
        self._pool = ThreadPoolExecutor(max_workers=num_shards, thread_name_prefix="shard")

    def run(self, call: Callable[[int], T], shards: Iterable[int] | None = None) -> list[T]:
        """`call(shard)` for each of `shards` (default: all of them); results in that order."""
        chosen = list(range(self.num_shards) if shards is None else shards)
        if len(chosen) <= 1:  # no thread hop for one shard
            return [call(shard) for shard in chosen]
        return list(self._pool.map(call, chosen))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
