"""Records <-> protobuf messages: paired `x_to_proto` / `x_from_proto` functions."""

from __future__ import annotations

import dataclasses
from typing import Any

from paramserver import __version__
from paramserver.federated.privacy import PrivacyReport
from paramserver.proto import paramserver_pb2 as pb
from paramserver.serde.shm import (
    offer_from_proto,
    offer_to_proto,
    ranges_from_proto,
    ranges_to_proto,
)
from paramserver.serde.specs import spec_from_proto, spec_to_proto
from paramserver.status import ServerStatus, WorkerInfo
from paramserver.tables.records import TableStatus
from paramserver.types import (
    CodecSpec,
    HandshakeRequest,
    Mode,
    ModelLayout,
    PartitionPlan,
    PushHeader,
    PushResult,
    Role,
    RoundClose,
    Session,
    StepOptions,
    TensorSlice,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ParameterServer"].full_name


def method_path(method: str) -> str:
    """'/paramserver.v1.ParameterServer/Push' for 'Push', read from the schema."""
    pb.DESCRIPTOR.services_by_name["ParameterServer"].methods_by_name[method]  # KeyError if absent
    return f"/{SERVICE_NAME}/{method}"


# ---- enums ---------------------------------------------------------------------------

_MODES: dict[Mode, pb.Mode] = {Mode.SYNC: pb.SYNC, Mode.ASYNC: pb.ASYNC, Mode.SSP: pb.SSP,
                             Mode.FEDERATED: pb.FEDERATED, Mode.FEDBUFF: pb.FEDBUFF}
_MODES_BACK: dict[int, Mode] = {v: k for k, v in _MODES.items()}
_ROLES: dict[Role, pb.Role] = {Role.WORKER: pb.WORKER, Role.OBSERVER: pb.OBSERVER}
_ROLES_BACK: dict[int, Role] = {v: k for k, v in _ROLES.items()}


def mode_from_proto(value: int) -> Mode:
    return _MODES_BACK.get(value, Mode.SYNC)


def role_from_proto(value: int) -> Role:
    return _ROLES_BACK.get(value, Role.WORKER)


# ---- records -------------------------------------------------------------------------


def layout_to_proto(layout: ModelLayout | None) -> pb.ModelLayout:
    if layout is None:
        return pb.ModelLayout()
    return pb.ModelLayout(tensors=[spec_to_proto(t) for t in layout.tensors])


def layout_from_proto(msg: pb.ModelLayout) -> ModelLayout | None:
    """None for an empty layout (no model registered yet)."""
    if not msg.tensors:
        return None
    return ModelLayout(tuple(spec_from_proto(t) for t in msg.tensors))


def plan_to_proto(plan: PartitionPlan | None) -> pb.PartitionPlan:
    if plan is None:
        return pb.PartitionPlan()
    return pb.PartitionPlan(
        num_shards=plan.num_shards,
        layout=layout_to_proto(plan.layout),
        slices=[pb.TensorSlice(tensor=s.tensor, start=s.start, length=s.length, shard=s.shard)
                for s in plan.slices],
    )


def plan_from_proto(msg: pb.PartitionPlan) -> PartitionPlan | None:
    """None for an empty plan; ValueError for one that does not cover the model exactly."""
    layout = layout_from_proto(msg.layout)
    if msg.num_shards == 0 or layout is None:
        return None
    slices = tuple(TensorSlice(s.tensor, s.start, s.length, s.shard) for s in msg.slices)
    return PartitionPlan(layout, msg.num_shards, slices)


def codec_to_proto(codec: CodecSpec) -> pb.CodecSpec:
    return pb.CodecSpec(name=codec.name, params=dict(codec.params))


def codec_from_proto(msg: pb.CodecSpec) -> CodecSpec:
    return CodecSpec(msg.name.lower(), tuple(sorted(msg.params.items())))


def handshake_request_to_proto(request: HandshakeRequest) -> pb.HandshakeRequest:
    return pb.HandshakeRequest(
        worker_id=request.worker_id,
        role=_ROLES[request.role],
        push_codecs=[codec_to_proto(c) for c in request.push_codecs],
        pull_codecs=[codec_to_proto(c) for c in request.pull_codecs],
        client_version=request.client_version,
        held_version=request.held_version,
        world_size=request.world_size,
        secure_aggregation=request.secure_aggregation,
        shm=offer_to_proto(request.shm),
    )


def handshake_request_from_proto(msg: pb.HandshakeRequest) -> HandshakeRequest:
    return HandshakeRequest(
        worker_id=msg.worker_id,
        role=role_from_proto(msg.role),
        push_codecs=tuple(codec_from_proto(c) for c in msg.push_codecs),
        pull_codecs=tuple(codec_from_proto(c) for c in msg.pull_codecs),
        client_version=msg.client_version,
        held_version=msg.held_version if msg.HasField("held_version") else None,
        world_size=msg.world_size if msg.HasField("world_size") else None,
        secure_aggregation=msg.secure_aggregation,
        shm=offer_from_proto(msg.shm) if msg.HasField("shm") else None,
    )


def session_to_proto(session: Session, server_version: str = __version__
                     ) -> pb.HandshakeResponse:
    return pb.HandshakeResponse(
        session_id=session.session_id,
        push_codec=codec_to_proto(session.push_codec),
        pull_codec=codec_to_proto(session.pull_codec),
        layout=layout_to_proto(session.layout),
        version=session.version,
        mode=_MODES[session.mode],
        expected_workers=session.expected_workers,
        chunk_bytes=session.chunk_bytes,
        server_version=server_version,
        plan=plan_to_proto(session.plan),
        shard_index=session.shard_index,
        incarnation=session.incarnation,
        heartbeat_interval_s=session.heartbeat_interval_s,
        lease_s=session.lease_s,
        staleness=session.staleness,
        momentum_correction=session.momentum_correction,
        step_call_bytes=session.step_call_bytes,
        shm_data_plane=session.shm_data_plane,
    )


def session_from_proto(msg: pb.HandshakeResponse) -> Session:
    return Session(
        session_id=msg.session_id,
        push_codec=codec_from_proto(msg.push_codec),
        pull_codec=codec_from_proto(msg.pull_codec),
        layout=layout_from_proto(msg.layout),
        version=msg.version,
        mode=mode_from_proto(msg.mode),
        expected_workers=msg.expected_workers,
        chunk_bytes=msg.chunk_bytes,
        plan=plan_from_proto(msg.plan),
        shard_index=msg.shard_index,
        incarnation=msg.incarnation,
        heartbeat_interval_s=msg.heartbeat_interval_s,
        lease_s=msg.lease_s,
        staleness=msg.staleness,
        momentum_correction=msg.momentum_correction,
        step_call_bytes=msg.step_call_bytes,
        shm_data_plane=msg.shm_data_plane,
    )


def push_header_to_proto(header: PushHeader) -> pb.PushHeader:
    return pb.PushHeader(
        session_id=header.session_id,
        step=header.step,
        num_samples=header.num_samples,
        tensors=[spec_to_proto(t) for t in header.tensors],
        more_parts=header.more_parts,
        incarnation=header.incarnation,
        sequence=header.sequence,
        momentum_applied=header.momentum_applied,
        shm=ranges_to_proto(header.shm),
        **_step_options_fields(header.options),
    )


def _step_options_fields(options: StepOptions | None) -> dict[str, Any]:
    if options is None:
        return {}
    fields: dict[str, Any] = {"lr": options.lr, "max_grad_norm": options.max_grad_norm,
                                 "found_inf": options.found_inf}
    if options.grad_scale != 1.0:
        fields["grad_scale"] = options.grad_scale
    return fields


def _step_options_from_proto(msg: pb.PushHeader) -> StepOptions | None:
    if not any(msg.HasField(f) for f in ("lr", "max_grad_norm", "grad_scale")) \
            and not msg.found_inf:
        return None
    return StepOptions(lr=msg.lr if msg.HasField("lr") else None,
                       max_grad_norm=msg.max_grad_norm if msg.HasField("max_grad_norm") else None,
                       grad_scale=msg.grad_scale if msg.HasField("grad_scale") else 1.0,
                       found_inf=msg.found_inf)


def push_header_from_proto(msg: pb.PushHeader) -> PushHeader:
    return PushHeader(
        session_id=msg.session_id,
        step=msg.step,
        num_samples=msg.num_samples,
        tensors=tuple(spec_from_proto(t) for t in msg.tensors),
        more_parts=msg.more_parts,
        incarnation=msg.incarnation,
        sequence=msg.sequence,
        momentum_applied=msg.momentum_applied,
        options=_step_options_from_proto(msg),
        shm=ranges_from_proto(msg.shm) if msg.HasField("shm") else None,
    )


def push_result_to_proto(result: PushResult) -> pb.PushResponse:
    return pb.PushResponse(version=result.version, applied=result.applied,
                           staleness=result.staleness, duplicate=result.duplicate)


def push_result_from_proto(msg: pb.PushResponse) -> PushResult:
    return PushResult(version=msg.version, applied=msg.applied, staleness=msg.staleness,
                      duplicate=msg.duplicate)


def status_to_proto(status: ServerStatus) -> pb.StatusResponse:
    layout = status.layout
    return pb.StatusResponse(
        layout=layout_to_proto(layout),
        version=status.version,
        mode=_MODES[status.mode],
        expected_workers=status.expected_workers,
        optimizer=status.optimizer,
        pending_pushes=status.pending_pushes,
        server_version=status.server_version,
        plan=plan_to_proto(status.plan),
        shard_index=status.shard_index,
        max_lead=status.max_lead,
        evicted=list(status.evicted),
        state_hash=status.state_hash,
        restored_version=status.restored_version,
        dropouts=list(status.dropouts),
        skipped_rounds=list(status.skipped_rounds),
        rejoins=list(status.rejoins),
        advertise_address=status.advertise_address,
        privacy=_privacy_to_proto(status.privacy),
        rounds=[_round_close(r) for r in status.rounds],
        workers=[
            pb.WorkerStatus(
                worker_id=w.worker_id,
                role=_ROLES[w.role],
                session_id=w.session_id,
                pushes=w.pushes,
                seconds_since_seen=w.seconds_since_seen,
                push_codec=codec_to_proto(w.push_codec),
                incarnation=w.incarnation,
                clock=w.clock,
            )
            for w in status.workers
        ],
        tensors=[
            pb.TensorStatus(spec=spec_to_proto(t), bytes=t.nbytes)
            for t in (layout.tensors if layout else ())
        ],
        tables=[pb.TableStatus(name=t.name, declared_rows=t.declared_rows, dim=t.dim,
                               materialized_rows=t.materialized_rows, bytes=t.bytes,
                               version=t.version, optimizer=t.optimizer)
                for t in status.tables],
    )


def status_from_proto(msg: pb.StatusResponse) -> ServerStatus:
    return ServerStatus(
        layout=layout_from_proto(msg.layout),
        version=msg.version,
        mode=mode_from_proto(msg.mode),
        expected_workers=msg.expected_workers,
        optimizer=msg.optimizer,
        pending_pushes=msg.pending_pushes,
        server_version=msg.server_version,
        plan=plan_from_proto(msg.plan),
        shard_index=msg.shard_index,
        max_lead=msg.max_lead,
        evicted=tuple(msg.evicted),
        state_hash=msg.state_hash,
        restored_version=msg.restored_version,
        dropouts=tuple(msg.dropouts),
        skipped_rounds=tuple(msg.skipped_rounds),
        rejoins=tuple(msg.rejoins),
        advertise_address=msg.advertise_address,
        privacy=_privacy_from_proto(msg),
        rounds=tuple(round_close_from_proto(r) for r in msg.rounds),
        workers=tuple(
            WorkerInfo(
                worker_id=w.worker_id,
                role=role_from_proto(w.role),
                session_id=w.session_id,
                pushes=w.pushes,
                seconds_since_seen=w.seconds_since_seen,
                push_codec=codec_from_proto(w.push_codec),
                incarnation=w.incarnation,
                clock=w.clock,
            )
            for w in msg.workers
        ),
        tables=tuple(TableStatus(t.name, t.declared_rows, t.dim, t.materialized_rows, t.bytes,
                                 t.version, t.optimizer) for t in msg.tables),
    )




def _privacy_to_proto(report: PrivacyReport | None) -> pb.PrivacyStatus | None:
    if report is None:
        return None
    return pb.PrivacyStatus(**dataclasses.asdict(report))


def _privacy_from_proto(msg: pb.StatusResponse) -> PrivacyReport | None:
    if not msg.HasField("privacy"):
        return None
    p = msg.privacy
    return PrivacyReport(mode=p.mode, noise_multiplier=p.noise_multiplier,
                         clip_norm=p.clip_norm, delta=p.delta, epsilon=p.epsilon,
                         rounds=p.rounds, target_epsilon=p.target_epsilon,
                         budget_spent=p.budget_spent, sampling_rate=p.sampling_rate)


def round_close_to_proto(close: RoundClose | None) -> pb.RoundClose | None:
    return None if close is None else _round_close(close)


def _round_close(close: RoundClose) -> pb.RoundClose:
    return pb.RoundClose(round=close.round, sampled=list(close.sampled),
                         counted=list(close.counted), skipped=close.skipped)


def round_close_from_proto(msg: pb.RoundClose) -> RoundClose:
    return RoundClose(round=msg.round, sampled=tuple(msg.sampled), counted=tuple(msg.counted),
                      skipped=msg.skipped)
