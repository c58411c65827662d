"""Exactly-once pushes: one ledger entry per worker, not one per push.

A push carries (worker, incarnation, sequence). gRPC never retries a request above 256 KiB
by itself, so the client retries pushes on its own, and a push whose reply was lost after
it was applied comes back with the same sequence: the ledger answers it with the original
result (marked duplicate) instead of applying it twice. The table is part of a checkpoint.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

from paramserver.errors import Aborted, DeadlineExceeded, FailedPrecondition
from paramserver.types import PushResult


@dataclass
class Entry:
    incarnation: int
    sequence: int
    result: PushResult | None  # None while in flight, or when the push was refused
    in_flight: bool = False


class PushLedger:
    """Per worker: the last sequence accepted and its answer."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._changed = threading.Condition()

    def begin(self, worker_id: str, incarnation: int, sequence: int,
              timeout_s: float) -> PushResult | None:
        """None: process this push (now marked in flight). Otherwise the earlier answer.

        Raises FAILED_PRECONDITION for a fenced incarnation or a sequence that does not
        advance by exactly one (a new incarnation starts at 1), and ABORTED for a replayed
        older sequence; all leave the ledger and the state untouched. Without the exact
        step, one forged push with sequence 2**64-1 would make every later push of the
        worker a "replay" (issue #13).
        """
        if sequence == 0:
            return None
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                entry = self._entries.get(worker_id)
                if entry is not None and incarnation < entry.incarnation:
                    raise FailedPrecondition(
                        f"worker {worker_id!r} incarnation {incarnation} is fenced off: "
                        f"incarnation {entry.incarnation} replaced it; handshake again")
                if entry is None or incarnation > entry.incarnation:
                    self._start(worker_id, incarnation, sequence, expected=1)
                    return None
                if sequence > entry.sequence:
                    self._start(worker_id, incarnation, sequence, entry.sequence + 1)
                    return None
                if sequence < entry.sequence:
                    raise Aborted(f"push sequence {sequence} of worker {worker_id!r} replays an "
                                  f"older push (the last accepted is {entry.sequence})")
                if not entry.in_flight:  # the same sequence again
                    if entry.result is None:  # the first try was refused: try again
                        entry.in_flight = True
                        return None
                    return dataclasses.replace(entry.result, duplicate=True)
                remaining = deadline - time.monotonic()  # the original is still running
                if remaining <= 0:
                    raise DeadlineExceeded(f"push {sequence} of worker {worker_id!r} is still "
                                           "being applied; retry")
                self._changed.wait(remaining)

    def _start(self, worker_id: str, incarnation: int, sequence: int,
               expected: int) -> None:
        """Mark a new push in flight (caller holds `_changed`)."""
        if sequence != expected:
            raise FailedPrecondition(
                f"push sequence {sequence} of worker {worker_id!r} incarnation {incarnation}: "
                f"expected {expected} (sequences advance by one per push, from 1 in each "
                "incarnation); handshake again")
        self._entries[worker_id] = Entry(incarnation, sequence, None, True)

    def finish(self, worker_id: str, incarnation: int, sequence: int,
               result: PushResult | None) -> None:
        """Record the answer of a push begun above (None: it was refused, nothing applied)."""
        if sequence == 0:
            return
        with self._changed:
            entry = self._entries.get(worker_id)
            if entry is not None and (entry.incarnation, entry.sequence) == (incarnation,
                                                                             sequence):
                entry.result, entry.in_flight = result, False
            self._changed.notify_all()

    def table(self) -> dict[str, Any]:
        """JSON-able, for checkpoints: finished entries only."""
        with self._changed:
            return {w: {"incarnation": e.incarnation, "sequence": e.sequence,
                        "result": dataclasses.asdict(e.result)}
                    for w, e in self._entries.items() if e.result is not None}

    def restore(self, table: dict[str, Any]) -> None:
        with self._changed:
            self._entries = {w: Entry(int(e["incarnation"]), int(e["sequence"]),
                                      PushResult(**e["result"]))
                             for w, e in table.items()}

    def __len__(self) -> int:
        with self._changed:
            return len(self._entries)
