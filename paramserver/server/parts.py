"""Pushes that arrive in parts: gradients sent bucket by bucket while backward still runs.

A worker that overlaps communication with backward pushes each bucket of gradients as soon as
it is ready (`more_parts=true`), then closes the step with a last part. The server holds the
decoded parts per session and hands the update policy one merged push when the last part
arrives, so sync and async policies see exactly what a single push would have given them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from paramserver.codecs import Update
from paramserver.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from paramserver.server.buffers import BufferPool, PooledBuffers

log = logging.getLogger(__name__)


@dataclass
class OpenPush:
    """The parts of one session's push received so far."""

    step: int
    buffers: PooledBuffers  # what the held updates view
    nbytes: int = 0  # counted against the server's --max-held-part-bytes
    updates: dict[str, Update] = field(default_factory=dict)


class PartAssembler:
    """Per-session open pushes, each owning its parts' pooled buffers; `_lock` guards
    `_open` and `_bytes`.

    The bytes held across all sessions are bounded (sessions are cheap, so a per-session
    bound alone is not): a part reserves its declared size before any byte of it is
    received (`reserve`), and the reservation becomes held bytes when the part is held.
    """

    def __init__(self, pool: BufferPool, max_bytes: int = 1 << 62) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._open: dict[str, OpenPush] = {}
        self._max_bytes = max_bytes
        self._bytes = 0  # held parts plus reservations of parts being received

    def reserve(self, nbytes: int) -> None:
        """Count `nbytes` of a part about to be received; RESOURCE_EXHAUSTED when the
        parts held by every session would exceed the bound."""
        with self._lock:
            if self._bytes + nbytes > self._max_bytes:
                raise ResourceExhausted(
                    f"push part of up to {nbytes} bytes refused: {self._bytes} bytes of "
                    f"unfinished multi-part pushes are held (--max-held-part-bytes "
                    f"{self._max_bytes}); close open pushes or retry")
            self._bytes += nbytes

    def unreserve(self, nbytes: int) -> None:
        with self._lock:
            self._bytes -= nbytes

    @property
    def held_bytes(self) -> int:
        """Bytes reserved for pushed parts held until their closing part arrives."""
        with self._lock:
            return self._bytes

    def check(self, session_id: str, step: int, names: list[str]) -> None:
        """Refuse, before any byte is received, a part that cannot join the open push."""
        with self._lock:
            self._check(session_id, step, names)

    def _check(self, session_id: str, step: int, names: list[str]) -> None:
        held = self._open.get(session_id)
        if held is None or held.step != step:
            if held is not None and step < held.step:
                raise FailedPrecondition(f"push part for step {step}, but this session's push "
                                         f"for step {held.step} is open")
            return
        repeated = sorted(set(names) & held.updates.keys())
        if repeated:
            raise InvalidArgument(f"tensors {repeated} were already pushed in an earlier part "
                                  f"of step {step}")

    def hold(self, session_id: str, step: int, updates: dict[str, Update],
             buffers: PooledBuffers, reserved: int = 0) -> None:
        """Keep a part (more_parts=true), and its buffers, until the closing part arrives;
        its `reserved` bytes stay counted until then."""
        with self._lock:
            self._check(session_id, step, list(updates))
            held = self._take_current(session_id, step)
            held.updates.update(updates)
            held.nbytes += reserved
            buffers.transfer(into=held.buffers)
            self._open[session_id] = held

    def close(self, session_id: str, step: int, updates: dict[str, Update],
              buffers: PooledBuffers) -> dict[str, Update]:
        """The closing part merged with the held ones: the whole push, removed from here;
        the held parts' buffers move to `buffers`."""
        with self._lock:
            self._check(session_id, step, list(updates))
            held = self._take_current(session_id, step)
            self._bytes -= held.nbytes
        held.buffers.transfer(into=buffers)
        return {**held.updates, **updates}

    def _take_current(self, session_id: str, step: int) -> OpenPush:
        held = self._open.pop(session_id, None)
        if held is not None and held.step != step:  # an abandoned older step: log, free
            log.warning("session %s left push parts of step %d unfinished (%d tensors); "
                        "dropped them for step %d", session_id[:8], held.step,
                        len(held.updates), step)
            held.buffers.release()
            self._bytes -= held.nbytes
            held = None
        return held or OpenPush(step, PooledBuffers(self._pool))

    def discard(self, session_id: str) -> None:
        """Drop a session's open parts (the session ended)."""
        with self._lock:
            held = self._open.pop(session_id, None)
            if held is not None:
                self._bytes -= held.nbytes
        if held is not None:
            held.buffers.release()

    def has_open(self, session_id: str) -> bool:
        """Whether the session holds parts of an unclosed push."""
        with self._lock:
            return session_id in self._open

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)
