"""A push, received and checked in one ordered sequence before anything changes.

Each check below refuses with the status in brackets and leaves the server state as it
was; only a push that passed them all is held (a part) or handed to the update policy,
which may still refuse it (federated screening) before applying anything:

 1. the stream opens with a PushHeader                               [INVALID_ARGUMENT]
 2. its session is open and a worker's      [FAILED_PRECONDITION, `session expired:`],
    opened by the caller's credential (with authentication on)       [PERMISSION_DENIED]
 2b. a push whose payload is in shared memory (`shm_plane.py`, docs/wire.md 5g): the
    session's data plane was accepted [FAILED_PRECONDITION], the segment is well named
    [INVALID_ARGUMENT] and the session's push segment [NOT_FOUND], one range per tensor,
    each inside the segment's payload bytes and within the codec's size bound, the
    segment stamped with this push's sequence, and no chunks follow on the stream
    [INVALID_ARGUMENT]; its windows then pass checks 10-12 as chunks do (a step's
    first push is read straight into the aggregate and checked there: `inplace.py`)
 3. a sequenced push (sequence > 0) comes from the session's own incarnation
                                                                  [FAILED_PRECONDITION]
 4. the push ledger: a retry of an answered push gets the first answer again (not
    applied twice); a replayed older sequence [ABORTED]; a fenced incarnation, or a
    sequence that does not advance by exactly one (1 opens an incarnation)
                                                                  [FAILED_PRECONDITION]
 5. a model is registered [FAILED_PRECONDITION]; every tensor is known [NOT_FOUND] with
    its registered shape and dtype, listed once, and floating-point    [INVALID_ARGUMENT]
 6. the part fits the session's open push (same step, no tensor twice)
                                              [FAILED_PRECONDITION / INVALID_ARGUMENT]
 7. weighted aggregation: num_samples > 0 on the closing part; its step options (lr,
    max_grad_norm, grad_scale) finite, lr >= 0, the others > 0        [INVALID_ARGUMENT]
 8. the update policy accepts the step (sync: the open step, not pushed yet, by this
    worker id [FAILED_PRECONDITION] or an earlier incarnation of it [ABORTED]; async: not
    from the future, not staler than --max-staleness)   [FAILED_PRECONDITION / ABORTED]
 9. a part that is not the last fits, at its largest, in the bytes every session's held
    parts may take (--max-held-part-bytes)                           [RESOURCE_EXHAUSTED]
10. chunks arrive in order, without gaps, within the codec's size bound, and nothing
    but chunks follows the header (an undecodable message included)   [INVALID_ARGUMENT]
11. every payload decodes under the session's push codec (qsgd: piece by piece while the
    rest arrives, with check 10 on each chunk, `arriving.py`)         [INVALID_ARGUMENT]
12. on the closing part, every decoded value of the whole push (held parts included) is
    finite: one poisoned gradient would spread to the whole model in one step. A push
    whose loop found inf/NaN itself (GradScaler: `found_inf`) is let through, as its step
    is skipped anyway; its model buffers must still be finite          [INVALID_ARGUMENT]

A sync push that needs no staging (`inplace.py`: one part, an elementwise codec, no loss
scale, inf/NaN or model buffers) runs checks 10-12 on each chunk, which is then added to
the step's aggregate at once. What is refused before its first add changes nothing; a push
refused or broken off after it discards the step's aggregate, and every worker that pushed
the step is answered ABORTED (`step discarded: `) to push it again: nothing is applied.

From check 8 on the session counts as an active member (`Membership.mark_active`): one a
sync step waits for. After check 12, model buffers in the push (BatchNorm statistics,
names under BUFFER_PREFIX) are written to the store as values (rank 0's win, as under DDP),
and a loss-scaled push (grad_scale, AMP) is divided by its scale, all parts together,
before the policy sees it (unless it found inf/NaN: that step is skipped anyway).

A Step call (a push and its pull in one message, `step_call.py`) comes through this same
sequence as a one-message stream, after its own checks of the pull it asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from paramserver.codecs import Codec, Update
from paramserver.codecs.base import to_dense
from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.security.roles import Principal
from paramserver.server.arriving import decode_arriving
from paramserver.server.assembly import (
    TensorAssembler,
    check_specs,
    drain_chunks,
    first_message,
    skip_chunks,
)
from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.server.config import ServerConfig
from paramserver.server.inplace import add_in_place, wire_dtypes
from paramserver.server.ledger import PushLedger
from paramserver.server.membership import Membership, SessionRecord
from paramserver.server.parts import PartAssembler
from paramserver.server.policies import ReceivedPush, UpdatePolicy
from paramserver.server.policies.step_rules import unscale
from paramserver.server.push_checks import (
    check_floating,
    check_options,
    decode,
    require_finite,
)
from paramserver.server.shm_plane import push_chunks
from paramserver.server.store import ParameterStore
from paramserver.types import (
    BUFFER_PREFIX,
    Aggregation,
    PushHeader,
    PushResult,
    StepOptions,
)

log = logging.getLogger(__name__)


class PushIntake:
    """Receives pushes for one server: the checks above, then hold or submit."""

    def __init__(self, *, config: ServerConfig, store: ParameterStore, members: Membership,
                 ledger: PushLedger, parts: PartAssembler, policy: UpdatePolicy,
                 pool: BufferPool) -> None:
        self._config = config
        self._store = store
        self._members = members
        self._ledger = ledger
        self._parts = parts
        self._policy = policy
        self._pool = pool

    def receive(self, stream: Iterator[object], caller: Principal | None = None) -> PushResult:
        header = first_message(stream, "push")  # 1
        if not isinstance(header, PushHeader):
            raise InvalidArgument("push stream must open with a PushHeader")
        record = self._members.require_worker(header.session_id, caller)  # 2
        if header.shm is not None:
            stream = push_chunks(record, header, stream, record.push_decoder)  # 2b
        if header.sequence and header.incarnation != record.incarnation:  # 3
            raise FailedPrecondition(
                f"push from incarnation {header.incarnation} of worker {record.worker_id!r}, "
                f"whose session is incarnation {record.incarnation}: handshake again")
        key = (record.worker_id, header.incarnation, header.sequence)
        earlier = self._ledger.begin(*key, timeout_s=self._config.max_wait_s)  # 4
        if earlier is not None:
            skip_chunks(stream)
            log.info("push %d of %r (incarnation %d) is a retry: answered, not applied again",
                     header.sequence, record.worker_id, header.incarnation)
            return earlier
        result = None
        try:
            result = self._receive_new(header, record, stream)
        finally:
            self._ledger.finish(*key, result)
        return result

    def _receive_new(self, header: PushHeader, record: SessionRecord,
                     stream: Iterator[object]) -> PushResult:
        check_specs(header.tensors, self._store.require_layout().by_name())  # 5
        check_floating(header.tensors)
        self._parts.check(header.session_id, header.step, [s.name for s in header.tensors])  # 6
        weight = 1.0 if header.more_parts else self._weight_of(header)  # 7
        if not header.more_parts and header.options is not None:
            check_options(header.options)  # 7
        self._policy.check_step(record.worker_id, header.step, record.incarnation)  # 8
        self._members.mark_active(header.session_id)
        codec = record.push_decoder
        in_place = self._receive_in_place(header, record, weight, stream)
        if in_place is not None:
            return in_place
        limits = [codec.max_payload_nbytes(s.numel, s.dtype) for s in header.tensors]
        reserved = sum(limits) if header.more_parts else 0
        self._parts.reserve(reserved)  # 9
        try:
            with PooledBuffers(self._pool) as buffers:
                updates = self._read_updates(header, codec, limits, stream, buffers)  # 10, 11
                if header.more_parts:
                    self._parts.hold(header.session_id, header.step, updates, buffers,
                                     reserved)
                    reserved = 0  # held now: counted until the push closes
                    return PushResult(version=self._store.version, applied=False)
                return self._submit(header, record, weight, updates, buffers)
        finally:
            self._parts.unreserve(reserved)

    def _receive_in_place(self, header: PushHeader, record: SessionRecord, weight: float,
                          stream: Iterator[object]) -> PushResult | None:
        """A push added chunk by chunk to the step's aggregate, no staging copy
        (`inplace.py`); None when it is to be staged instead."""
        wires = (wire_dtypes(header, record.push_decoder)
                 if not self._parts.has_open(header.session_id) else None)
        if wires is None:
            return None
        push = self._policy.open_stream(record.worker_id, header.step, weight,
                                        header.momentum_applied, record.incarnation)
        if push is None:
            return None
        add_in_place(push, header, record.push_decoder, wires, stream)  # 10, 11, 12 on each chunk
        result = push.finish([s.name for s in header.tensors], header.options or StepOptions())
        self._members.count_push(header.session_id)
        return result

    def _submit(self, header: PushHeader, record: SessionRecord, weight: float,
                updates: dict[str, Update], buffers: PooledBuffers) -> PushResult:
        """The closing part: merged with the held ones, handed to the update policy."""
        updates = self._parts.close(header.session_id, header.step, updates, buffers)
        options = header.options or StepOptions()
        require_finite(updates, skip_gradients=options.found_inf)  # 12
        self._write_buffers(updates)
        if not options.found_inf:
            unscale(updates, options.grad_scale)
        result = self._policy.submit(ReceivedPush(
            worker_id=record.worker_id, step=header.step, weight=weight, updates=updates,
            buffers=buffers, momentum_applied=header.momentum_applied, options=options,
            incarnation=record.incarnation))
        self._members.count_push(header.session_id)
        return result

    def _read_updates(self, header: PushHeader, codec: Codec, limits: list[int],
                      stream: Iterator[object], buffers: PooledBuffers) -> dict[str, Update]:
        arrived = decode_arriving(header.tensors, codec, limits, stream, buffers)
        if arrived is not None:  # qsgd: decoded while it arrives (`arriving.py`)
            return arrived
        assembler = TensorAssembler(header.tensors, buffers, limits)
        drain_chunks(stream, assembler, "push")
        return {spec.name: decode(codec, spec, payload)
                for spec, payload in zip(header.tensors, assembler.finish_payloads())}

    def _write_buffers(self, updates: dict[str, Update]) -> None:
        """Take the model buffers (BatchNorm statistics) out of a push and store their
        values: they are values, not gradients, and never reach the optimizer."""
        names = [n for n in updates if n.startswith(BUFFER_PREFIX)]
        if names:
            values = {}
            for name in names:
                spec = self._store.spec(name)
                values[name] = to_dense(updates.pop(name), spec.numel, spec.dtype)
            self._store.overwrite(values)

    def _weight_of(self, header: PushHeader) -> float:
        if self._config.aggregation is Aggregation.MEAN:
            return 1.0
        if header.num_samples <= 0:
            raise InvalidArgument(f"weighted aggregation needs num_samples > 0, "
                                  f"got {header.num_samples}")
        return float(header.num_samples)
