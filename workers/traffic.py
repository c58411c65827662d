"""What a client moved over the wire, summed over its connections (one per shard): the
figures benchmarks, metrics and reports read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from workers.connection import ServerConnection


class LinkShaper(Protocol):
    """Paces the messages of one connection, e.g. to emulate a slower network (benchmarks).

    Called with every message's size: `send` before a message leaves, `receive` after one
    arrived. Both may block; they are called from gRPC's threads, so must be thread-safe.
    """

    def send(self, nbytes: int) -> None:
        """Block until `nbytes` may leave."""

    def receive(self, nbytes: int) -> None:
        """Block until `nbytes` may arrive."""


class TrafficCounters:
    """Byte counters of a client; the client sets `connections` and counts
    `dense_bytes_pushed` (the gradients' uncompressed size)."""

    connections: Sequence[ServerConnection]
    dense_bytes_pushed: int

    @property
    def bytes_pushed(self) -> int:
        return sum(c.bytes_pushed for c in self.connections)

    @property
    def bytes_pulled(self) -> int:
        return sum(c.bytes_pulled for c in self.connections)

    @property
    def gradient_bytes_pushed(self) -> int:
        """Bytes of gradient pushes on the wire (payloads, framing and headers)."""
        return sum(c.gradient_bytes_pushed for c in self.connections)

    @property
    def compression_ratio(self) -> float:
        """Uncompressed gradient bytes / gradient bytes actually sent."""
        sent = self.gradient_bytes_pushed
        return self.dense_bytes_pushed / sent if sent else 1.0
