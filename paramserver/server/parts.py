"""Pushes that arrive in parts: gradients sent bucket by bucket while backward still runs.

A worker that overlaps communication with backward pushes each bucket of gradients as soon as
it is ready (`more_parts=true`), then closes the step with a last part. The server holds the
decoded parts per session and hands the update policy one merged push when the last part
arrives, so sync and async policies see exactly what a single push would have given them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from paramserver.codecs import Update
from paramserver.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


@dataclass
class OpenPush:
    """The parts of one session's push received so far."""

    step: int
    updates: dict[str, Update] = field(default_factory=dict)
    buffers: list[torch.Tensor] = field(default_factory=list)


class PartAssembler:
    """Per-session open pushes; `release` returns a discarded part's pooled buffers."""

    def __init__(self, release: Callable[[torch.Tensor], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._open: dict[str, OpenPush] = {}

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
             buffers: list[torch.Tensor]) -> None:
        """Keep a part (more_parts=true) until the closing part arrives."""
        with self._lock:
            self._check(session_id, step, list(updates))
            held = self._take_current(session_id, step)
            held.updates.update(updates)
            held.buffers += buffers
            self._open[session_id] = held

    def close(self, session_id: str, step: int, updates: dict[str, Update],
              buffers: list[torch.Tensor]) -> tuple[dict[str, Update], list[torch.Tensor]]:
        """The closing part merged with the held ones: the whole push, removed from here."""
        with self._lock:
            self._check(session_id, step, list(updates))
            held = self._take_current(session_id, step)
        return {**held.updates, **updates}, held.buffers + buffers

    def _take_current(self, session_id: str, step: int) -> OpenPush:
        held = self._open.pop(session_id, None)
        if held is not None and held.step != step:  # an abandoned older step: log, free
            log.warning("session %s left push parts of step %d unfinished (%d tensors); "
                        "dropped them for step %d", session_id[:8], held.step,
                        len(held.updates), step)
            self.discard_push(held)
            held = None
        return held or OpenPush(step)

    def discard(self, session_id: str) -> None:
        """Drop a session's open parts (the session ended)."""
        with self._lock:
            held = self._open.pop(session_id, None)
        if held is not None:
            self.discard_push(held)

    def discard_push(self, held: OpenPush) -> None:
        for buffer in held.buffers:
            self._release(buffer)

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)
