"""Pushes summed in a fixed order of workers, so one seed gives one model (issue #17)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.server.policies.base import ReceivedPush


class InOrder:
    """Pushes taken in a fixed order of workers, whatever order they arrive in (issue #17).

    Float addition is not associative: a sum taken in arrival order differs in its last bits
    from run to run, and training carries the difference on. A push that arrives before its
    predecessors in `order` is held (its pooled bytes move here) until they came, or until
    the step closes without them (`rest`). So the sum is always taken in `order`, skipping
    the workers that never pushed, and only the out-of-order pushes wait in memory.
    Not thread-safe: the owning policy holds its lock around calls.
    """

    def __init__(self, pool: BufferPool, order: Iterable[str]) -> None:
        self._pool = pool
        self._order = list(order)
        self._next = 0  # order[:_next] were taken (or skipped at the end)
        self._held: dict[str, ReceivedPush] = {}

    def arrive(self, push: ReceivedPush) -> list[ReceivedPush]:
        """Hold `push`; returns the pushes now due, in order (the held ones own their
        buffers: the caller releases them once added)."""
        kept = PooledBuffers(self._pool)
        push.buffers.transfer(kept)
        self._held[push.worker_id] = dataclasses.replace(push, buffers=kept)
        due = []
        while self._next < len(self._order) and self._order[self._next] in self._held:
            due.append(self._held.pop(self._order[self._next]))
            self._next += 1
        return due

    def rest(self) -> list[ReceivedPush]:
        """The pushes still held (behind a worker that never pushed), in order; one from
        a worker outside `order` (the policy refuses those) comes last, not lost."""
        rest = [self._held.pop(w) for w in self._order[self._next:] if w in self._held]
        rest += [self._held.pop(w) for w in sorted(self._held)]
        self._next = len(self._order)
        return rest

    def discard(self) -> None:
        for push in self._held.values():
            push.buffers.release()
        self._held.clear()
