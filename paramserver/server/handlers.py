"""Network-free request handlers: decoded records in, records (or encoded chunks) out.

The gRPC servicer (`servicer.py`) is a thin shell around `ParameterServerCore`; tests drive
the core directly without a network. Handlers raise `paramserver.errors` exceptions, never
touch gRPC, and leave state untouched when they raise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from paramserver import __version__, serde, wire
from paramserver.codecs import Codec, CodecError, Update, negotiate
from paramserver.errors import FailedPrecondition, InvalidArgument, NotFound
from paramserver.federated.fedbuff import FedBuffPolicy
from paramserver.federated.rounds import RoundPolicy
from paramserver.server.assembly import BufferPool, TensorAssembler, check_specs
from paramserver.server.async_policy import AsyncPolicy
from paramserver.server.checkpoint import CheckpointStore, ShardState
from paramserver.server.config import ServerConfig
from paramserver.server.ledger import PushLedger
from paramserver.server.membership import Membership, SessionRecord
from paramserver.server.parts import PartAssembler
from paramserver.server.policy import UpdatePolicy
from paramserver.server.ssp_policy import SspPolicy
from paramserver.server.store import ParameterStore
from paramserver.server.sync_policy import SyncPolicy
from paramserver.sharding import plan_partition
from paramserver.transport import chunk_ranges
from paramserver.types import (
    Aggregation,
    CodecSpec,
    Mode,
    ModelLayout,
    PushHeader,
    PushResult,
    RegisterHeader,
    Role,
    ServerStatus,
    Session,
    TensorSpec,
)

log = logging.getLogger(__name__)


def _first_message(stream: Iterator[object], what: str) -> object:
    first = next(stream, None)
    if first is None:
        raise InvalidArgument(f"empty {what} stream: the first message must be a header")
    if isinstance(first, serde.MalformedMessage):
        raise InvalidArgument(first.reason)
    if isinstance(first, wire.Chunk):
        raise InvalidArgument(f"{what} stream must open with a header, not a chunk")
    return first


def _skip_chunks(stream: Iterable[object]) -> None:
    """Consume the rest of a push whose answer is already known (a duplicate)."""
    for _ in stream:
        pass


def _drain_chunks(stream: Iterable[object], assembler: TensorAssembler, what: str) -> None:
    """Feed every remaining message to the assembler; a header or garbage is an error."""
    for message in stream:
        if isinstance(message, wire.Chunk):
            assembler.add(message)
        elif isinstance(message, serde.MalformedMessage):
            raise InvalidArgument(message.reason)
        else:
            raise InvalidArgument(f"a {what} stream carries exactly one header, at the start")


class ParameterServerCore:
    """One parameter server's state and request handling."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = ParameterStore(config.optimizer)
        self.members = Membership(config.mode, config.expected_workers, config.lease_s)
        self.ledger = PushLedger()
        self._pool = BufferPool()
        self._parts = PartAssembler(self._pool.give)
        self.policy: UpdatePolicy = self._make_policy(config)
        self.checkpoints = (CheckpointStore(config.checkpoint_dir)
                            if config.checkpoint_dir is not None else None)
        self._checkpoint_lock = threading.Lock()
        self.restored_version = -1
        self._checkpointed_version = 0  # the version of the newest checkpoint
        self._last_wait_log = 0.0
        if self.checkpoints is not None:
            self._restore()

    def _make_policy(self, config: ServerConfig) -> UpdatePolicy:
        if config.mode is Mode.SYNC:
            return SyncPolicy(self.store, self.members, self._pool, config.sync_quorum)
        if config.mode is Mode.SSP:
            return SspPolicy(self.store, self.members, self._pool, config.staleness)
        if config.mode is Mode.FEDERATED:
            return RoundPolicy(self.store, self.members, self._pool, config.federated)
        if config.mode is Mode.FEDBUFF:
            return FedBuffPolicy(self.store, self._pool, config.federated)
        return AsyncPolicy(self.store, self._pool, config.max_staleness)

    # ---- handshake, status, heartbeat ----------------------------------------------------

    def handshake(self, worker_id: str, role: Role, push_offers: list[CodecSpec],
                  pull_offers: list[CodecSpec]) -> Session:
        push = negotiate("push", push_offers, self.config.codecs)
        pull = negotiate("pull", pull_offers, self.config.codecs)
        record = self.members.open(worker_id, role, push, pull)
        log.info("session %s opened by %s %r, incarnation %d (push %s, pull %s)",
                 record.session_id[:8], role.value, worker_id, record.incarnation, push, pull)
        lease = self.config.lease_s
        with self.store.lock:
            return Session(record.session_id, push, pull, self.store.layout, self.store.version,
                           self.config.mode, self.config.expected_workers,
                           self.config.chunk_bytes, self.store.plan, self.store.shard_index,
                           record.incarnation, lease / 4 if lease else 0.0, lease,
                           self.config.staleness)

    def heartbeat(self, session_id: str) -> int:
        self.members.touch(session_id)
        return self.store.version

    def join_round(self, session_id: str, round_: int, timeout_s: float) -> tuple[int, bool, int]:
        """Federated: wait for round >= `round_`; (round, sampled?, sampled count)."""
        record = self.members.require_worker(session_id)
        return self.policy.join_round(record.worker_id, round_,
                                      min(timeout_s, self.config.max_wait_s))

    def leave(self, session_id: str) -> None:
        """A worker that is done: drop its session so no step waits for it."""
        record = self.members.leave(session_id)
        if record is not None:
            log.info("worker %r left at step %d", record.worker_id, self.store.version)
            self._parts.discard(session_id)
            self.policy.members_changed()

    def tick(self) -> None:
        """Periodic duties (the server runs this every fraction of a lease): evict workers
        whose lease ran out, and say which workers a long-waiting step waits for."""
        evicted = self.members.evict_silent(self.store.version)
        for record in evicted:
            log.warning("evicted worker %r (incarnation %d) at step %d: no heartbeat for "
                        "%.1fs", record.worker_id, record.incarnation, self.store.version,
                        self.config.lease_s)
            self._parts.discard(record.session_id)
        if evicted:
            self.policy.members_changed()
        self.policy.tick()
        self._maybe_checkpoint()
        waited, missing = self.policy.waiting_for()
        now = time.monotonic()
        if missing and waited > max(1.0, self.config.lease_s / 2) and (
                now - self._last_wait_log > max(1.0, self.config.lease_s / 2)):
            self._last_wait_log = now
            log.warning("step %d has waited %.1fs for workers %s", self.store.version, waited,
                        missing)

    def status(self, include_state_hash: bool = False) -> ServerStatus:
        return ServerStatus(
            layout=self.store.layout,
            version=self.store.version,
            mode=self.config.mode,
            expected_workers=self.config.expected_workers,
            optimizer=self.config.optimizer.describe(),
            pending_pushes=self.policy.pending(),
            server_version=__version__,
            workers=self.members.snapshot(self.policy.clocks()),
            plan=self.store.plan,
            shard_index=self.store.shard_index,
            max_lead=getattr(self.policy, "max_lead", 0),
            evicted=tuple(self.members.evictions),
            state_hash=self.store.state_hash() if include_state_hash else "",
            restored_version=self.restored_version,
            dropouts=tuple(getattr(self.policy, "dropouts", ())),
            skipped_rounds=tuple(getattr(self.policy, "skipped_rounds", ())),
        )

    # ---- register ------------------------------------------------------------------------

    def register(self, stream: Iterator[object]) -> tuple[bool, int, ModelLayout]:
        """Create the model from a header plus initial values, or join an identical one."""
        header = _first_message(stream, "register")
        if not isinstance(header, RegisterHeader):
            raise InvalidArgument("register stream must open with a RegisterHeader")
        layout, values_follow = header.layout, header.values_follow
        self.members.require_worker(header.session_id)
        if layout is None:
            raise InvalidArgument("register header carries an empty layout")
        # A client that sends no plan (one server, or a foreign client) holds the whole model.
        plan = header.plan or plan_partition(layout, 1)
        if plan.shard_layout(header.shard_index) != layout:
            raise InvalidArgument(f"the header's layout is not shard {header.shard_index} of "
                                  "the plan it carries")
        with self.store.lock:
            if self.store.layout is not None:
                self.store.require_same_model(layout, plan, header.shard_index)
                return False, self.store.version, self.store.layout
        if not values_follow:
            raise FailedPrecondition("no model is registered yet; the first worker must send "
                                     "initial values (values_follow=true)")
        assembler = TensorAssembler(layout.tensors)
        _drain_chunks(stream, assembler, "register")
        created = self.store.create(layout, assembler.finish(), plan, header.shard_index)
        if created:
            log.info("model registered: shard %d of %d, %d tensors, %d bytes",
                     header.shard_index, plan.num_shards, len(layout.tensors), layout.nbytes)
        return created, self.store.version, layout

    # ---- push ----------------------------------------------------------------------------

    def push(self, stream: Iterator[object]) -> PushResult:
        """Receive one gradient push (or one part of it); hand it to the update policy only
        once it is whole: all chunks received and, for a push in parts, the closing part in."""
        header = _first_message(stream, "push")
        if not isinstance(header, PushHeader):
            raise InvalidArgument("push stream must open with a PushHeader")
        record = self.members.require_worker(header.session_id)
        key = (record.worker_id, header.incarnation, header.sequence)
        if header.sequence and header.incarnation != record.incarnation:
            raise FailedPrecondition(
                f"push from incarnation {header.incarnation} of worker {record.worker_id!r}, "
                f"whose session is incarnation {record.incarnation}: handshake again")
        earlier = self.ledger.begin(*key, timeout_s=self.config.max_wait_s)
        if earlier is not None:
            _skip_chunks(stream)
            log.info("push %d of %r (incarnation %d) is a retry: answered, not applied again",
                     header.sequence, record.worker_id, header.incarnation)
            return earlier
        result = None
        try:
            result = self._push(header, record, stream)
        finally:
            self.ledger.finish(*key, result)
        if result.applied:
            self._maybe_checkpoint()
        return result

    def _push(self, header: PushHeader, record: SessionRecord,
              stream: Iterator[object]) -> PushResult:
        layout = self.store.require_layout()
        check_specs(header.tensors, layout.by_name())
        self._parts.check(header.session_id, header.step, [s.name for s in header.tensors])
        weight = 1.0 if header.more_parts else self._weight_of(header)
        self.policy.check_step(record.worker_id, header.step)
        codec = record.push_decoder
        limits = [codec.max_payload_nbytes(s.numel, s.dtype) for s in header.tensors]
        assembler = TensorAssembler(header.tensors, self._pool, limits)
        try:
            _drain_chunks(stream, assembler, "push")
        except BaseException:
            assembler.discard()
            raise
        payloads = assembler.finish_payloads()
        buffers = [buffer for _, buffer in payloads if buffer is not None]
        try:
            updates = {spec.name: self._decode(codec, spec, payload)
                       for spec, (payload, _) in zip(header.tensors, payloads)}
            if header.more_parts:
                self._parts.hold(header.session_id, header.step, updates, buffers)
                return PushResult(version=self.store.version, applied=False)
            updates, buffers = self._parts.close(header.session_id, header.step, updates,
                                                 buffers)
        except BaseException:
            for buffer in buffers:
                self._pool.give(buffer)
            raise
        result = self.policy.submit(record.worker_id, header.step, weight, updates, buffers)
        self.members.count_push(header.session_id)
        return result

    @staticmethod
    def _decode(codec: Codec, spec: TensorSpec, payload: torch.Tensor) -> Update:
        try:
            return codec.decode(payload, spec.numel, spec.dtype)
        except CodecError as error:
            raise InvalidArgument(f"tensor {spec.name!r}: payload does not decode under codec "
                                  f"{codec.spec}: {error}") from None

    def _weight_of(self, header: PushHeader) -> float:
        if self.config.aggregation is Aggregation.MEAN:
            return 1.0
        if header.num_samples <= 0:
            raise InvalidArgument(f"weighted aggregation needs num_samples > 0, "
                                  f"got {header.num_samples}")
        return float(header.num_samples)

    # ---- pull ----------------------------------------------------------------------------

    def pull(self, session_id: str, min_version: int, names: list[str],
             timeout_s: float) -> Iterator[bytes]:
        """Encoded PullResponse messages: a header, then each tensor's chunks.

        Each chunk is copied under the store lock, so it never mixes two versions. In sync
        mode a member's pull is also version-consistent as a whole, since the version cannot
        advance before that member pushes again; an async pull may span updates (Hogwild).
        """
        record = self.members.touch(session_id)
        layout = self.store.require_layout()
        specs = layout.tensors
        if names:
            by_name = layout.by_name()
            missing = [n for n in names if n not in by_name]
            if missing:
                raise NotFound(f"unknown tensors {missing}")
            specs = tuple(by_name[n] for n in names)
        timeout_s = min(timeout_s, self.config.max_wait_s)
        started = time.monotonic()
        if record.role is Role.WORKER:
            self.policy.wait_turn(record.worker_id, timeout_s)
        version = self.store.wait_for_version(min_version,
                                              timeout_s - (time.monotonic() - started))
        return self._pull_messages(version, specs, record.pull_encoder)

    def _pull_messages(self, version: int, specs: tuple[TensorSpec, ...],
                       codec: Codec) -> Iterator[bytes]:
        """The header, then chunks of each tensor encoded with the session's pull codec.

        Pull codecs are elementwise (none, fp16, bf16), so each chunk is a range of
        elements encoded on its own and the chunk offset is in encoded bytes.
        """
        yield serde.encode_pull_header(version, specs)
        raw = codec.spec.name == "none"
        for index, spec in enumerate(specs):
            wire_item = codec.max_payload_nbytes(1, spec.dtype)
            per_chunk = max(1, self.config.chunk_bytes // wire_item)
            flat = self.store.params[spec.name].view(-1)
            as_bytes = self.store.byte_view(spec.name) if raw else None  # one view per tensor
            for start, end in chunk_ranges(spec.numel, per_chunk):
                with self.store.lock:
                    data = (as_bytes[start * wire_item:end * wire_item] if as_bytes is not None
                            else memoryview(codec.encode(flat[start:end]).numpy()))
                    message = wire.encode_chunk(index, start * wire_item, data)
                yield message

    # ---- checkpoints ---------------------------------------------------------------------

    def checkpoint(self, every: int = 0) -> Path | None:
        """Write this shard's state (atomically, with a checksum); None without a model, or
        when `every` is given and fewer steps than that passed since the last checkpoint."""
        if self.checkpoints is None or self.store.layout is None:
            return None
        with self._checkpoint_lock:
            if every and self.store.version - self._checkpointed_version < every:
                return None
            version, params, optimizer = self.store.snapshot()
            assert self.store.layout is not None and self.store.plan is not None
            state = ShardState(version, self.store.layout, self.store.plan,
                               self.store.shard_index, params, optimizer,
                               {"ledger": self.ledger.table(),
                                "incarnations": self.members.incarnations()})
            path = self.checkpoints.save(state)
            self._checkpointed_version = max(self._checkpointed_version, version)
        log.info("checkpoint of step %d written to %s", version, path)
        return path

    def _maybe_checkpoint(self) -> None:
        """Checkpoint once `checkpoint_every` steps passed since the last one, whoever closed
        them (a push, an eviction, a round timeout)."""
        every = self.config.checkpoint_every
        if every and self.store.version - self._checkpointed_version >= every:
            self.checkpoint(every)

    def _restore(self) -> None:
        assert self.checkpoints is not None
        state = self.checkpoints.load_latest()
        if state is None:
            return
        self.store.restore(state.layout, state.plan, state.shard_index, state.params,
                           state.optimizer, state.version)
        self.ledger.restore(state.extra.get("ledger", {}))
        self.members.restore_incarnations(state.extra.get("incarnations", {}))
        self.members.mark_formed()
        self.restored_version = self._checkpointed_version = state.version
        log.warning("resumed shard %d from the checkpoint of step %d (state %s)",
                    state.shard_index, state.version, self.store.state_hash())

    def close(self) -> None:
        """Wake every waiter with UNAVAILABLE; called on shutdown."""
        self.store.close()
