"""One parameter server's state and request handling, without a network.

The gRPC servicer (`servicer.py`) is a thin shell around `ParameterServerCore`; tests drive
the core directly. Requests go in as decoded records and come out as records (or encoded
pull chunks); errors are `paramserver.errors` exceptions, raised with the state untouched.
Pushes are checked by `intake.PushIntake`, applied by the mode's update policy
(`policies/`), and checkpointed by `checkpointing.ShardCheckpointer`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from paramserver import __version__
from paramserver.codecs import DELTA_PULL_CODECS, negotiate
from paramserver.errors import WORKER_ID_HELD, FailedPrecondition, InvalidArgument
from paramserver.process_tuning import trim_heap
from paramserver.security.roles import Principal, check_handshake, check_state_hash, printable
from paramserver.server.assembly import TensorAssembler, drain_chunks, first_message
from paramserver.server.buffers import BufferPool
from paramserver.server.checkpoint import BeforeWrite
from paramserver.server.checkpointing import ShardCheckpointer
from paramserver.server.config import ServerConfig
from paramserver.server.intake import PushIntake
from paramserver.server.ledger import PushLedger
from paramserver.server.limits import LongPolls
from paramserver.server.membership import Membership
from paramserver.server.parts import PartAssembler
from paramserver.server.policies import PolicyContext, UpdatePolicy, make_policy
from paramserver.server.policies.base import Clock
from paramserver.server.policies.secure_rounds import (
    SecAggReply,
    SecAggRequest,
    check_secure_aggregation,
)
from paramserver.server.pull import (
    EncodedPulls,
    check_pull_codec,
    delta_pull_messages,
    pulled_specs,
)
from paramserver.server.pull_streams import PullStreams
from paramserver.server.shm_plane import ShmOffer, accept_offer, write_pull
from paramserver.server.state_transfer import install_state, read_state
from paramserver.server.store import ParameterStore
from paramserver.server.tables import TableService
from paramserver.sharding import plan_partition
from paramserver.status import ServerStatus
from paramserver.types import (
    CodecSpec,
    Mode,
    PushResult,
    RegisterHeader,
    Registration,
    Role,
    RoundClose,
    RoundJoin,
    Session,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerInternals:
    """Figures for metrics that `status` does not carry."""

    held_part_bytes: int  # pushed parts waiting for their closing part
    checkpoint_s: float  # the newest checkpoint's write time (0: none)
    checkpoint_at: float  # its time.time() (0: none)


class ParameterServerCore:
    """One server (or shard): the store, its members, the update policy, checkpoints."""

    def __init__(self, config: ServerConfig, *, clock: Clock = time.monotonic,
                 before_checkpoint_write: BeforeWrite | None = None) -> None:
        self.config = config
        self.store = ParameterStore(config.optimizer)
        self.members = Membership(config.mode, config.expected_workers, config.lease_s, clock,
                                  max_sessions=config.limits.max_sessions,
                                  member_idle_s=config.limits.member_idle_s,
                                  regroup_s=config.reform_timeout_s)
        self._long_polls = LongPolls(config.limits.max_long_polls)
        self.ledger = PushLedger()
        pool = BufferPool()
        self._parts = PartAssembler(pool, config.limits.max_held_part_bytes)
        self.policy: UpdatePolicy = make_policy(PolicyContext(
            store=self.store, members=self.members, pool=pool, config=config, clock=clock))
        self._intake = PushIntake(config=config, store=self.store, members=self.members,
                                  ledger=self.ledger, parts=self._parts, policy=self.policy,
                                  pool=pool)
        self.tables = TableService(config, self.members, self.ledger)  # issue #16
        self._checkpoints = (
            ShardCheckpointer(self.store, self.members, self.ledger, config.checkpoint_dir,
                              config.checkpoint_every, config.reform_timeout_s,
                              before_checkpoint_write,
                              config.checkpoint_key.read_bytes() if config.checkpoint_key
                              else None, self.tables, config.dp,
                              self.policy.privacy_accountant())
            if config.checkpoint_dir is not None else None)
        self._clock = clock
        self._last_wait_log = 0.0
        self.rejoins: list[str] = []  # "worker@held->version", for status
        self.pull_streams = PullStreams()  # compressed pulls: one replica per delta codec
        self._encoded_pulls = EncodedPulls(config.limits.max_step_call_bytes)  # small pulls
        self.advertise_address = ""  # set by the app once bound: host:port to dial
        self.restored_version = (self._checkpoints.restore()
                                 if self._checkpoints is not None else -1)

    # ---- handshake, heartbeat, rounds, leaving -------------------------------------------

    def handshake(self, worker_id: str, role: Role, push_offers: list[CodecSpec],
                  pull_offers: list[CodecSpec], held_version: int | None = None,
                  world_size: int | None = None, *,
                  caller: Principal | None = None, secure_aggregation: bool = False,
                  shm: ShmOffer | None = None) -> Session:
        """Open a session. `held_version`: a worker handshaking again says which version of
        the parameters it holds; it goes on from the server's version either way.
        `world_size`: the job size a worker states (torchrun's WORLD_SIZE), checked
        against --workers, and a first handshake stating it is refused while another live
        session holds the worker id (two processes with one RANK). `caller` (None: no
        authentication) owns the session; it may only open one under its own name
        (`security/roles.py`)."""
        self.config.limits.check_worker_id(worker_id)
        self.config.limits.check_offers(push_offers)
        self.config.limits.check_offers(pull_offers)
        check_handshake(caller, worker_id, role)
        if world_size is not None and role is Role.WORKER:
            self._check_job_size(worker_id, world_size, rejoin=held_version is not None)
        check_secure_aggregation(self.config, worker_id, role, secure_aggregation)
        push = negotiate("push", push_offers, self.config.codecs)
        pull = negotiate("pull", pull_offers, self.config.codecs)
        record = self.members.open(worker_id, role, push, pull,
                                   owner=caller.name if caller else None)
        log.info("session %s opened by %s %r, incarnation %d (push %s, pull %s)",
                 record.session_id[:8], role.value, printable(worker_id), record.incarnation,
                 push, pull)
        shm_accepted = accept_offer(self.config, record, shm)  # `shm_plane.py`
        if held_version is not None and role is Role.WORKER:
            self._note_rejoin(worker_id, held_version)
        lease = self.config.lease_s
        with self.store.lock:
            return Session(
                session_id=record.session_id, push_codec=push, pull_codec=pull,
                layout=self.store.layout, version=self.store.version, mode=self.config.mode,
                expected_workers=self.config.expected_workers,
                chunk_bytes=self.config.chunk_bytes, plan=self.store.plan,
                shard_index=self.store.shard_index, incarnation=record.incarnation,
                heartbeat_interval_s=lease / 4 if lease else 0.0, lease_s=lease,
                staleness=self.config.staleness,
                momentum_correction=self.config.momentum_correction(record.push_decoder),
                step_call_bytes=self.config.limits.max_step_call_bytes,
                shm_data_plane=shm_accepted)

    def _check_job_size(self, worker_id: str, world_size: int, rejoin: bool) -> None:
        expected = self.config.expected_workers
        if self.config.mode is Mode.SYNC and world_size != expected:
            raise FailedPrecondition(
                f"worker {worker_id!r} states WORLD_SIZE={world_size}, but this server was "
                f"started with --workers {expected}: start both with the same job size")
        if not rejoin and worker_id in self.members.live_workers():
            raise FailedPrecondition(
                f"worker id {worker_id!r} {WORKER_ID_HELD} (a duplicate RANK?): give each "
                f"process its own RANK or worker_id; if that process died, its session "
                f"ends within --lease-timeout ({self.config.lease_s:g}s)")

    def _note_rejoin(self, worker_id: str, held: int) -> None:
        version = self.store.version
        self.rejoins.append(f"{worker_id}@{held}->{version}")
        if held > version:
            log.warning("worker %r rejoined holding version %d, ahead of this server's %d "
                        "(restored from an older checkpoint): it goes back to %d", worker_id,
                        held, version, version)
        elif held < version:
            log.warning("worker %r rejoined holding version %d, %d behind: it pulls %d",
                        worker_id, held, version - held, version)

    def heartbeat(self, session_id: str, *, caller: Principal | None = None) -> int:
        self.members.touch(session_id, caller)
        return self.store.version

    def join_round(self, session_id: str, round_: int, timeout_s: float,
                   cancelled: threading.Event | None = None, *,
                   caller: Principal | None = None, close: RoundClose | None = None) -> RoundJoin:
        """Federated: wait for round >= `round_`; whether this client is sampled for it.
        `cancelled`: set when the caller went away (the wait then ends; see `wake`)."""
        record = self.members.require_worker(session_id, caller)
        with self._long_polls.poll("JoinRound", cancelled) as poll:
            return self.policy.join_round(record.worker_id, round_,
                                          min(timeout_s, self.config.max_wait_s), poll,
                                          close=close)

    def secure_aggregate(self, request: SecAggRequest, timeout_s: float,
                         cancelled: threading.Event | None = None, *,
                         caller: Principal | None = None) -> SecAggReply:
        record = self.members.require_worker(request.session_id, caller)
        with self._long_polls.poll("SecureAggregate", cancelled) as poll:
            return self.policy.secure_aggregate(record.worker_id, request, timeout_s, poll)

    def wake(self) -> None:
        """Make every long poll re-check its condition (a call was cancelled)."""
        self.store.wake()

    def leave(self, session_id: str, *, caller: Principal | None = None) -> None:
        """A worker that is done: drop its session so no step waits for it (only the
        credential that opened a session may end it)."""
        record = self.members.leave(session_id, caller)
        if record is not None:
            log.info("worker %r left at step %d", record.worker_id, self.store.version)
            self._parts.discard(session_id)
            self.policy.members_changed()
            self.tables.members_changed()

    def tick(self) -> None:
        """Periodic duties (the server runs this every fraction of a lease): evict workers
        whose lease ran out, time out rounds, checkpoint, and say which workers a
        long-waiting step waits for."""
        evicted = self.members.evict_silent(self.store.version)
        for record in evicted:
            log.warning("evicted worker %r (incarnation %d) at step %d: no heartbeat for "
                        "%.1fs", record.worker_id, record.incarnation, self.store.version,
                        self.config.lease_s)
            self._parts.discard(record.session_id)
        awaited = self.members.awaited()
        formed = self.members.refresh_formation()
        if formed:
            log.warning("the job re-formed at step %d without %s (--reform-timeout)",
                        self.store.version, list(awaited))
        # Every tick, not only on evictions: a worker that stops pushing leaves the set a
        # step waits for once --member-idle-timeout passes, with no event to say so.
        self.policy.members_changed()
        self.tables.members_changed()
        self.policy.tick()
        self._maybe_checkpoint()
        self._log_long_wait()

    def _log_long_wait(self) -> None:
        wait = self.policy.waiting_for()
        now, period = self._clock(), max(1.0, self.config.lease_s / 2)
        if wait.missing and wait.waited_s > period and now - self._last_wait_log > period:
            self._last_wait_log = now
            log.warning("step %d has waited %.1fs for workers %s", self.store.version,
                        wait.waited_s, list(wait.missing))

    def status(self, include_state_hash: bool = False, *,
               caller: Principal | None = None) -> ServerStatus:
        """The server's state; never a session id (they are credentials). The state hash
        (which reads the whole model under the store lock) is for admins only."""
        if include_state_hash:
            check_state_hash(caller)
        report = self.policy.report()
        return ServerStatus(
            layout=self.store.layout, version=self.store.version, mode=self.config.mode,
            expected_workers=self.config.expected_workers,
            optimizer=self.config.optimizer.describe(),
            pending_pushes=report.pending_pushes,
            server_version=__version__,
            workers=self.members.snapshot(report.clocks),
            plan=self.store.plan,
            shard_index=self.store.shard_index,
            max_lead=report.max_lead,
            evicted=tuple(self.members.evictions),
            state_hash=self.store.state_hash() if include_state_hash else "",
            restored_version=self.restored_version,
            dropouts=report.dropouts, skipped_rounds=report.skipped_rounds,
            rejoins=tuple(self.rejoins),
            advertise_address=self.advertise_address,
            tables=self.tables.status(),
            privacy=report.privacy, rounds=report.rounds,
        )

    # ---- register, push, pull ------------------------------------------------------------

    def register(self, stream: Iterator[object], *,
                 caller: Principal | None = None) -> Registration:
        """Create the model from a header plus initial values, or join an identical one."""
        header = first_message(stream, "register")
        if not isinstance(header, RegisterHeader):
            raise InvalidArgument("register stream must open with a RegisterHeader")
        self.members.require_worker(header.session_id, caller)
        layout = header.layout
        if layout is None:
            raise InvalidArgument("register header carries an empty layout")
        self.config.limits.check_layout(layout)  # before the plan or any buffer is made
        # A client that sends no plan (one server, or a foreign client) holds the whole model.
        plan = header.plan or plan_partition(layout, 1)
        if plan.shard_layout(header.shard_index) != layout:
            raise InvalidArgument(f"the header's layout is not shard {header.shard_index} of "
                                  "the plan it carries")
        with self.store.registering:  # one copy of the values at a time, not W (issue #14)
            with self.store.lock:
                if self.store.layout is not None:
                    self.store.require_same_model(layout, plan, header.shard_index)
                    self.members.mark_active(header.session_id)  # joined: a member now
                    return Registration(created=False, version=self.store.version,
                                        layout=self.store.layout)
            if not header.values_follow:
                raise FailedPrecondition("no model is registered yet; the first worker must "
                                         "send initial values (values_follow=true)")
            assembler = TensorAssembler(layout.tensors)
            drain_chunks(stream, assembler, "register")
            created = self.store.create(layout, assembler.finish(), plan, header.shard_index)
        self.members.mark_active(header.session_id)
        if created:
            trim_heap()  # what the values' transfer took on the way (process_tuning)
            log.info("model registered: shard %d of %d, %d tensors, %d bytes",
                     header.shard_index, plan.num_shards, len(layout.tensors), layout.nbytes)
        return Registration(created=created, version=self.store.version, layout=layout)

    def push(self, stream: Iterator[object], *,
             caller: Principal | None = None) -> PushResult:
        """Receive one gradient push (or one part of it); it reaches the update policy only
        once it is whole and passed every check (see `intake.py` for their order)."""
        result = self._intake.receive(stream, caller)
        if result.applied:
            self._maybe_checkpoint()
        return result

    def pull(self, session_id: str, min_version: int, names: list[str],
             timeout_s: float, cancelled: threading.Event | None = None,
             held_version: int = -1, *, caller: Principal | None = None,
             shm_segment: str = "") -> Iterable[bytes]:
        """Encoded PullResponse messages: a header, then each tensor's chunks.

        In sync mode a member's pull is version-consistent as a whole, since the version
        cannot advance before that member pushes again; an async pull may span updates
        (Hogwild). SSP holds a worker's pull while it is too far ahead. A pull that has to
        wait takes one of `--max-long-polls` slots, and ends once `cancelled` is set. With a
        delta pull codec the answer is the change since `held_version` (`pull_streams.py`).
        """
        record = self.members.touch(session_id, caller)
        specs = pulled_specs(self.store.require_layout(), names)
        check_pull_codec(record.pull_encoder, specs)
        timeout_s = min(timeout_s, self.config.max_wait_s)
        started = time.monotonic()
        with self._long_polls.poll("Pull", cancelled) as poll:
            if record.role is Role.WORKER:
                self.policy.wait_turn(record.worker_id, timeout_s, poll)
            version = self.store.wait_for_version(
                min_version, timeout_s - (time.monotonic() - started), poll)
        codec = record.pull_encoder
        if codec.spec.name in DELTA_PULL_CODECS:
            served = self.pull_streams.for_codec(codec).serve(self.store, specs, held_version)
            return delta_pull_messages(served, specs, self.config.chunk_bytes)
        if shm_segment:  # into the worker's segment, the header alone on the stream
            return write_pull(record, self.store, version, specs, codec, shm_segment,
                              self.config.chunk_bytes)
        return self._encoded_pulls.messages(self.store, version, specs, codec,
                                            self.config.chunk_bytes)

    def get_state(self, session_id: str, *, caller: Principal | None = None) -> bytes:
        """This shard's whole state (see `state_transfer`), for a worker's checkpoint."""
        self.members.touch(session_id, caller)
        return read_state(self.store, self.tables, self.policy.privacy_accountant())

    def set_state(self, session_id: str, blob: bytes, *,
                  caller: Principal | None = None) -> int:
        """Install a worker's checkpoint on this fresh shard; the version it holds."""
        self.members.require_worker(session_id, caller)
        version = install_state(self.store, blob, self.policy.report().pending_pushes,
                                self.tables, self.config.dp, self.policy.privacy_accountant())
        log.info("state of version %d installed by a worker (%s)", version,
                 self.store.state_hash()[:12])
        return version

    # ---- checkpoints and shutdown --------------------------------------------------------

    def checkpoint(self, every: int = 0) -> Path | None:
        """Write this shard's state now (see `ShardCheckpointer.save`); None when
        checkpointing is off or there is nothing (new) to save."""
        return self._checkpoints.save(every) if self._checkpoints is not None else None

    def internals(self) -> ServerInternals:
        """Held push bytes and checkpoint timing, for metrics."""
        saver = self._checkpoints
        return ServerInternals(held_part_bytes=self._parts.held_bytes,
                               checkpoint_s=saver.last_save_s if saver else 0.0,
                               checkpoint_at=saver.last_saved_at if saver else 0.0)

    def _maybe_checkpoint(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.maybe_save()

    def close(self) -> None:
        """Wake every waiter with UNAVAILABLE; called on shutdown."""
        self.store.close()
        self.tables.close()

