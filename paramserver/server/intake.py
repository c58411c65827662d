"""A push, received and checked in one ordered sequence before anything changes.

Each check below refuses with the status in brackets and leaves the server state as it
was; only a push that passed them all is held (a part) or handed to the update policy,
which may still refuse it (federated screening) before applying anything:

 1. the stream opens with a PushHeader                               [INVALID_ARGUMENT]
 2. its session is open and a worker's      [FAILED_PRECONDITION, `session expired:`]
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
 7. weighted aggregation: num_samples > 0 on the closing part          [INVALID_ARGUMENT]
 8. the update policy accepts the step (sync: the open step, not pushed yet; async: not
    from the future, not staler than --max-staleness)   [FAILED_PRECONDITION / ABORTED]
 9. a part that is not the last fits, at its largest, in the bytes every session's held
    parts may take (--max-held-part-bytes)                           [RESOURCE_EXHAUSTED]
10. chunks arrive in order, without gaps, within the codec's size bound, and nothing
    but chunks follows the header (an undecodable message included)   [INVALID_ARGUMENT]
11. every payload decodes under the session's push codec               [INVALID_ARGUMENT]
12. every decoded value is finite (no NaN, no infinity): one poisoned gradient would
    spread to the whole model in one step                              [INVALID_ARGUMENT]

From check 8 on the session counts as an active member (`Membership.mark_active`): one a
sync step waits for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from paramserver.codecs import Codec, CodecError, Update
from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.server.assembly import (
    TensorAssembler,
    check_specs,
    drain_chunks,
    first_message,
    skip_chunks,
)
from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.server.config import ServerConfig
from paramserver.server.ledger import PushLedger
from paramserver.server.membership import Membership, SessionRecord
from paramserver.server.parts import PartAssembler
from paramserver.server.policies import ReceivedPush, UpdatePolicy
from paramserver.server.store import ParameterStore
from paramserver.types import Aggregation, PushHeader, PushResult, TensorSpec

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

    def receive(self, stream: Iterator[object]) -> PushResult:
        header = first_message(stream, "push")  # 1
        if not isinstance(header, PushHeader):
            raise InvalidArgument("push stream must open with a PushHeader")
        record = self._members.require_worker(header.session_id)  # 2
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
        _check_floating(header.tensors)
        self._parts.check(header.session_id, header.step, [s.name for s in header.tensors])  # 6
        weight = 1.0 if header.more_parts else self._weight_of(header)  # 7
        self._policy.check_step(record.worker_id, header.step)  # 8
        self._members.mark_active(header.session_id)
        codec = record.push_decoder
        limits = [codec.max_payload_nbytes(s.numel, s.dtype) for s in header.tensors]
        reserved = sum(limits) if header.more_parts else 0
        self._parts.reserve(reserved)  # 9
        try:
            with PooledBuffers(self._pool) as buffers:
                updates = self._read_updates(header, codec, limits, stream, buffers)  # 10-12
                if header.more_parts:
                    self._parts.hold(header.session_id, header.step, updates, buffers,
                                     reserved)
                    reserved = 0  # held now: counted until the push closes
                    return PushResult(version=self._store.version, applied=False)
                return self._submit(header, record, weight, updates, buffers)
        finally:
            self._parts.unreserve(reserved)

    def _submit(self, header: PushHeader, record: SessionRecord, weight: float,
                updates: dict[str, Update], buffers: PooledBuffers) -> PushResult:
        """The closing part: merged with the held ones, handed to the update policy."""
        updates = self._parts.close(header.session_id, header.step, updates, buffers)
        result = self._policy.submit(ReceivedPush(
            worker_id=record.worker_id, step=header.step, weight=weight, updates=updates,
            buffers=buffers))
        self._members.count_push(header.session_id)
        return result

    def _read_updates(self, header: PushHeader, codec: Codec, limits: list[int],
                      stream: Iterator[object], buffers: PooledBuffers) -> dict[str, Update]:
        assembler = TensorAssembler(header.tensors, buffers, limits)
        drain_chunks(stream, assembler, "push")
        updates = {spec.name: _decode(codec, spec, payload)
                   for spec, payload in zip(header.tensors, assembler.finish_payloads())}
        for spec in header.tensors:
            _require_finite(spec, updates[spec.name])
        return updates

    def _weight_of(self, header: PushHeader) -> float:
        if self._config.aggregation is Aggregation.MEAN:
            return 1.0
        if header.num_samples <= 0:
            raise InvalidArgument(f"weighted aggregation needs num_samples > 0, "
                                  f"got {header.num_samples}")
        return float(header.num_samples)


def _check_floating(specs: tuple[TensorSpec, ...]) -> None:
    """Only floating-point parameters take gradients (an integer buffer is registered for
    pulls, never pushed)."""
    for spec in specs:
        if not spec.dtype.is_floating_point:
            raise InvalidArgument(f"tensor {spec.name!r} is {spec.dtype}: only floating-point "
                                  "tensors can be pushed")


def all_finite(values: torch.Tensor) -> bool:
    """True when no element is NaN or infinite.

    One reduction, no temporary as large as the tensor: a sum is finite exactly when every
    element is, unless the finite elements overflow the dtype; only then (a sum that is not
    finite) is the exact elementwise test run, to tell the two apart."""
    if bool(torch.isfinite(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def _require_finite(spec: TensorSpec, update: Update) -> None:
    if not all_finite(update.values):
        raise InvalidArgument(f"tensor {spec.name!r}: the update holds NaN or infinite "
                              "values; nothing was applied")


def _decode(codec: Codec, spec: TensorSpec, payload: torch.Tensor) -> Update:
    try:
        return codec.decode(payload, spec.numel, spec.dtype)
    except CodecError as error:
        raise InvalidArgument(f"tensor {spec.name!r}: payload does not decode under codec "
                              f"{codec.spec}: {error}") from None
