"""Sessions and the job's live workers: leases, incarnations, joining, leaving, eviction.

Every worker session holds a lease renewed by any request it makes (the client heartbeats
in the background); a worker silent for `lease_s` is evicted, so a synchronous step never
waits for the dead. Each handshake of a worker starts a new incarnation; the previous
session is fenced off, and a request on it gets SessionExpired (handshake again).

A synchronous job is *formed* once `expected_workers` workers have joined (so step 0 never
starts with whoever came first); from then on workers may join and leave freely. A server
restarted from a checkpoint *re-forms* the job: it counts as formed again only once the
workers it had at that checkpoint are back (or `expected_workers` of them, when none were
recorded), or, after `reform(timeout_s)`, with whoever is back, so the first worker to
reconnect never trains alone while the others are still retrying. A sync job whose last
worker is evicted (every process died: a torchrun restart, a crash of every node) re-forms
the same way, waiting for the workers it lost, at most `regroup_s` (--reform-timeout).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from paramserver.codecs import Codec, make_codec
from paramserver.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    SessionExpired,
)
from paramserver.security.roles import Principal, check_owner, printable
from paramserver.shm.records import ShmOffer
from paramserver.status import WorkerInfo
from paramserver.types import CodecSpec, Mode, Role

EXPIRED_MEMORY = 4096  # why-expired answers kept for sessions that are gone


@dataclass
class SessionRecord:
    session_id: str
    worker_id: str
    role: Role
    push_codec: CodecSpec
    pull_codec: CodecSpec
    incarnation: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    pushes: int = 0
    owner: str | None = None  # the credential that opened it (None: no authentication)
    last_active: float | None = None  # the last register or push; None: handshake only
    shm: ShmOffer | None = None  # its accepted shared-memory segments (`shm_plane.py`)
    push_decoder: Codec = field(init=False)  # decodes this session's pushes
    pull_encoder: Codec = field(init=False)  # encodes this session's pulls

    def __post_init__(self) -> None:
        self.push_decoder = make_codec(self.push_codec)
        self.pull_encoder = make_codec(self.pull_codec)


class Membership:
    """Open sessions by id; `_lock` guards every field and every record."""

    def __init__(self, mode: Mode, expected_workers: int, lease_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, *, max_sessions: int = 1024,
                 member_idle_s: float = 0.0, regroup_s: float = 0.0) -> None:
        self._expected = expected_workers
        self.lease_s = lease_s  # 0: nobody is ever evicted
        self._max_sessions = max_sessions
        self._idle_s = member_idle_s  # 0: an active worker stays one until it leaves
        self._clock = clock
        self._sessions: dict[str, SessionRecord] = {}
        self._incarnations: dict[str, int] = {}  # worker_id -> last incarnation handed out
        self._expired: OrderedDict[str, str] = OrderedDict()  # session_id -> why
        self._formed = mode not in (Mode.SYNC, Mode.FEDERATED)  # these wait for N workers
        self._reforms = mode in (Mode.SYNC, Mode.SSP, Mode.FEDERATED)  # after a restart
        self._form_on_activity = mode in (Mode.SYNC, Mode.SSP)
        self._active: dict[str, float] = {}  # worker_id -> its last register or push
        self._awaited: frozenset[str] = frozenset()  # re-forming: the members it had
        self._reform_deadline: float | None = None  # re-forming until then
        self.evictions: list[str] = []  # "worker@step", oldest first
        self._lost: set[str] = set()  # evicted worker ids that have not come back or left
        self._regroup_s = regroup_s if mode is Mode.SYNC else 0.0  # 0: never re-forms
        self._lock = threading.Lock()

    # ---- sessions --------------------------------------------------------------------------

    def open(self, worker_id: str, role: Role, push: CodecSpec, pull: CodecSpec,
             owner: str | None = None) -> SessionRecord:
        """A new session and incarnation; the worker's previous session is fenced off.
        `owner`: the authenticated credential's name, the only one that may use it."""
        if not worker_id:
            raise InvalidArgument("worker_id must not be empty")
        with self._lock:
            for old in [s for s, r in self._sessions.items()
                        if r.worker_id == worker_id and r.role is role]:
                self._forget(old, f"worker {printable(worker_id)!r} opened a newer session")
            if len(self._sessions) >= self._max_sessions:
                raise ResourceExhausted(f"this server has {len(self._sessions)} open sessions, "
                                        "its limit (--max-sessions); retry later")
            incarnation = self._incarnations.get(worker_id, 0) + 1
            if role is Role.WORKER:
                self._incarnations[worker_id] = incarnation
                self._lost.discard(worker_id)
            record = SessionRecord(uuid.uuid4().hex, worker_id, role, push, pull, incarnation,
                                   self._clock(), owner=owner)
            self._sessions[record.session_id] = record
            self._update_formed()
            return record

    def touch(self, session_id: str, caller: Principal | None = None) -> SessionRecord:
        """The open session `session_id`, its lease renewed; PermissionDenied when
        `caller` (None: no authentication) did not open it."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None:
                why = self._expired.get(session_id, "this server does not know it (restarted?)")
                raise SessionExpired(f"session {printable(session_id, 8)}: {why}; handshake "
                                     "again")
            check_owner(caller, record.owner, session_id)
            record.last_seen = self._clock()
            return record

    def require_worker(self, session_id: str, caller: Principal | None = None) -> SessionRecord:
        record = self.touch(session_id, caller)
        if record.role is not Role.WORKER:
            raise FailedPrecondition(f"session of {printable(record.worker_id)!r} is an "
                                     "observer and cannot push or register")
        return record

    def leave(self, session_id: str, caller: Principal | None = None) -> SessionRecord | None:
        """A worker that is done: nobody waits for it any more. Only its owner may."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is not None:
                check_owner(caller, record.owner, session_id)
                self._forget(session_id,
                             f"worker {printable(record.worker_id)!r} left the job")
                self._lost.discard(record.worker_id)
            return record

    def evict_silent(self, step: int) -> list[SessionRecord]:
        """Evict every session (worker or observer) whose lease ran out; returns the
        workers among them (observers hold no state anyone waits for)."""
        if self.lease_s <= 0:
            return []
        now = self._clock()
        with self._lock:
            silent = [r for r in self._sessions.values() if now - r.last_seen > self.lease_s]
            for record in silent:
                self._forget(record.session_id,
                             f"{record.role.value} {printable(record.worker_id)!r} "
                             f"(incarnation {record.incarnation}) was evicted at step {step} "
                             f"after {now - record.last_seen:.1f}s without a heartbeat")
                if record.role is Role.WORKER:
                    self.evictions.append(f"{record.worker_id}@{step}")
                    self._lost.add(record.worker_id)
            workers = [r for r in silent if r.role is Role.WORKER]
            if workers and self._regroup_s and self._formed and not self._workers():
                self._regroup()
            return workers

    def _regroup(self) -> None:
        """Every worker was evicted: form again once the lost ones are back (torchrun
        restarts them all, each after its predecessor's lease), or `regroup_s` passed, so
        the first to come back does not take the job's remaining steps alone. Caller holds
        `_lock`."""
        self._awaited = frozenset(self._lost)
        self._reform_deadline = self._clock() + self._regroup_s
        self._formed = False

    def _forget(self, session_id: str, why: str) -> None:
        del self._sessions[session_id]
        self._expired[session_id] = why
        while len(self._expired) > EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    # ---- the job ---------------------------------------------------------------------------

    def _workers(self) -> set[str]:
        return {r.worker_id for r in self._sessions.values() if r.role is Role.WORKER}

    def _members(self) -> set[str]:
        """The workers that form a job: in sync and SSP those with a session whose worker
        id registered or pushed (in any incarnation; a restored job's members count as
        such), so a fresh id that only handshakes does not; federated rounds sample every
        client with a session, and their timeouts bound a round's wait."""
        return {r.worker_id for r in self._sessions.values()
                if r.role is Role.WORKER and (r.worker_id in self._active
                                              or not self._form_on_activity)}

    def live_workers(self) -> set[str]:
        with self._lock:
            return self._workers()

    def blocking_workers(self) -> set[str]:
        """The live workers a sync step or an SSP pull waits for: those whose worker id
        registered or pushed within `member_idle_s`. A worker that rejoins (a new
        incarnation) is waited for from its handshake on, as before; a session of a new id
        that only handshakes and heartbeats (a "ghost") never makes a job wait (#13)."""
        now = self._clock()
        with self._lock:
            return {r.worker_id for r in self._sessions.values()
                    if r.role is Role.WORKER and r.worker_id in self._active
                    and (not self._idle_s or now - self._active[r.worker_id] <= self._idle_s)}

    def mark_active(self, session_id: str) -> None:
        """The session registered or is pushing: a member that steps wait for."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is not None:
                record.last_active = self._active[record.worker_id] = self._clock()
                if len(self._active) > EXPIRED_MEMORY:  # forget the longest idle ids
                    for worker_id in sorted(self._active, key=self._active.__getitem__)[
                            :EXPIRED_MEMORY // 2]:
                        del self._active[worker_id]
                self._update_formed()

    def _update_formed(self) -> bool:
        """Form the job if its rule is met now; True when this call formed it."""
        if self._formed:
            return False
        workers = self._members()
        if self._reform_deadline is None:
            self._formed = len(workers) >= self._expected
        elif self._awaited:
            self._formed = self._awaited <= workers or (
                bool(workers) and self._clock() >= self._reform_deadline)
        else:
            self._formed = len(workers) >= self._expected or (
                bool(workers) and self._clock() >= self._reform_deadline)
        return self._formed

    @property
    def formed(self) -> bool:
        with self._lock:
            self._update_formed()
            return self._formed

    def refresh_formation(self) -> bool:
        """Re-check the forming rule (a deadline may have passed); True if the job formed
        just now, so a step that only waited for that may close."""
        with self._lock:
            return self._update_formed()

    def reform(self, members: Iterable[str], timeout_s: float) -> None:
        """After a restart from a checkpoint: wait again for `members` (the workers the job
        had), or for `expected_workers` when none are known, at most `timeout_s`."""
        if not self._reforms:
            return
        with self._lock:
            self._awaited = frozenset(members)
            now = self._clock()
            for member in self._awaited:  # the job's members before the restart
                self._active.setdefault(member, now)
            self._reform_deadline = self._clock() + timeout_s
            self._formed = False
            self._update_formed()

    def awaited(self) -> tuple[str, ...]:
        """Re-forming: the members the job still waits for (empty once formed)."""
        with self._lock:
            if self._formed:
                return ()
            return tuple(sorted(self._awaited - self._members()))

    def incarnations(self) -> dict[str, int]:
        with self._lock:
            return dict(self._incarnations)

    def restore_incarnations(self, table: dict[str, int]) -> None:
        with self._lock:
            for worker_id, incarnation in table.items():
                self._incarnations[worker_id] = max(incarnation,
                                                    self._incarnations.get(worker_id, 0))

    def count_push(self, session_id: str) -> None:
        with self._lock:
            record = self._sessions.get(session_id)
            if record is not None:
                record.pushes += 1

    def snapshot(self, clocks: dict[str, int] | None = None) -> tuple[WorkerInfo, ...]:
        """Who is connected, for `Status`: without session ids, which are credentials
        (anyone holding one could push as, or end, that worker)."""
        now = self._clock()
        clocks = clocks or {}
        with self._lock:
            return tuple(
                WorkerInfo(r.worker_id, r.role, "", r.pushes, now - r.last_seen,
                           r.push_codec, r.incarnation, clocks.get(r.worker_id, r.pushes))
                for r in sorted(self._sessions.values(), key=lambda r: r.worker_id)
            )
