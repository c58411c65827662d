"""Sessions: who is connected, in which role, with which codecs.

In sync mode the job has a fixed number of workers (`--workers N`), so step 0 never starts
with whoever registered first; the faults issue (#5) makes membership dynamic.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from paramserver.codecs import Codec, make_codec
from paramserver.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from paramserver.types import CodecSpec, Mode, Role, WorkerInfo


@dataclass
class SessionRecord:
    session_id: str
    worker_id: str
    role: Role
    push_codec: CodecSpec
    pull_codec: CodecSpec
    last_seen: float = field(default_factory=time.monotonic)
    pushes: int = 0
    push_decoder: Codec = field(init=False)  # decodes this session's pushes
    pull_encoder: Codec = field(init=False)  # encodes this session's pulls

    def __post_init__(self) -> None:
        self.push_decoder = make_codec(self.push_codec)
        self.pull_encoder = make_codec(self.pull_codec)


class Membership:
    """Open sessions by id; `_lock` guards `_sessions` and every record in it."""

    def __init__(self, mode: Mode, expected_workers: int) -> None:
        self._mode = mode
        self._expected = expected_workers
        self._sessions: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()

    def open(self, worker_id: str, role: Role, push: CodecSpec, pull: CodecSpec) -> SessionRecord:
        """A new session; a worker that handshakes again replaces its old session."""
        if not worker_id:
            raise InvalidArgument("worker_id must not be empty")
        with self._lock:
            workers = {r.worker_id for r in self._sessions.values() if r.role is Role.WORKER}
            if (role is Role.WORKER and self._mode is Mode.SYNC
                    and worker_id not in workers and len(workers) >= self._expected):
                raise ResourceExhausted(
                    f"this synchronous job has {self._expected} workers "
                    f"({', '.join(sorted(workers))}); worker {worker_id!r} cannot join")
            for old in [s for s, r in self._sessions.items()
                        if r.worker_id == worker_id and r.role is role]:
                del self._sessions[old]
            record = SessionRecord(uuid.uuid4().hex, worker_id, role, push, pull)
            self._sessions[record.session_id] = record
            return record

    def touch(self, session_id: str) -> SessionRecord:
        """The open session `session_id`, marked as seen now."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None:
                raise FailedPrecondition(
                    f"unknown session {session_id!r}; call Handshake to open a new one")
            record.last_seen = time.monotonic()
            return record

    def require_worker(self, session_id: str) -> SessionRecord:
        record = self.touch(session_id)
        if record.role is not Role.WORKER:
            raise FailedPrecondition(f"session of {record.worker_id!r} is an observer and "
                                     "cannot push or register")
        return record

    def count_push(self, session_id: str) -> None:
        with self._lock:
            record = self._sessions.get(session_id)
            if record is not None:
                record.pushes += 1

    def snapshot(self) -> tuple[WorkerInfo, ...]:
        now = time.monotonic()
        with self._lock:
            return tuple(
                WorkerInfo(r.worker_id, r.role, r.session_id, r.pushes, now - r.last_seen,
                           r.push_codec)
                for r in sorted(self._sessions.values(), key=lambda r: r.worker_id)
            )
