"""Per method, the four (de)serializers between wire bytes and records that the servicer
and the client plug into gRPC, so neither of them ever sees a protobuf class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from paramserver.proto import paramserver_pb2 as pb
from paramserver.serde.records import (
    handshake_request_from_proto,
    handshake_request_to_proto,
    layout_from_proto,
    layout_to_proto,
    push_result_from_proto,
    push_result_to_proto,
    round_close_from_proto,
    round_close_to_proto,
    session_from_proto,
    session_to_proto,
    status_from_proto,
    status_to_proto,
)
from paramserver.serde.secagg import (
    secagg_reply_from_proto,
    secagg_reply_to_proto,
    secagg_request_from_proto,
    secagg_request_to_proto,
)
from paramserver.serde.step_call import step_rpc
from paramserver.serde.streams import (
    MalformedMessage,
    decode_pull_response,
    decode_push_request,
    decode_register_request,
)
from paramserver.serde.tables import table_rpcs
from paramserver.transport import MAX_UNARY_REQUEST_BYTES
from paramserver.types import (
    ModelLayout,
    PullRequest,
    Registration,
    RoundJoin,
    RoundRequest,
    StateUpload,
)


def _identity(message: bytes) -> bytes:
    """Serializer for messages that are already encoded."""
    return message


@dataclass(frozen=True)
class Rpc:
    """One method's four (de)serializers. The server uses `request_from_bytes` and
    `response_to_bytes`, the client the other two. A unary request that does not parse
    becomes a `MalformedMessage` (answered INVALID_ARGUMENT), not an exception."""

    request_to_bytes: Callable[[Any], bytes]
    request_from_bytes: Callable[[bytes], Any]
    response_to_bytes: Callable[[Any], bytes]
    response_from_bytes: Callable[[bytes], Any]


def _parsing(message_type: type[Any], from_proto: Callable[[Any], Any],
             max_bytes: int | None = None) -> Callable[[bytes], Any]:
    """A deserializer that never raises (an exception inside a gRPC deserializer becomes
    INTERNAL, with a traceback logged for every request): `max_bytes` bounds a request."""
    def parse(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return MalformedMessage(f"{message_type.__name__} of {len(data)} bytes; at most "
                                    f"{max_bytes}", too_large=True)
        try:
            return from_proto(message_type.FromString(data))
        except (DecodeError, ValueError, TypeError, KeyError, OverflowError) as exc:
            return MalformedMessage(f"cannot decode {message_type.__name__}: {exc}")
    return parse


def _request(message_type: type[Any], from_proto: Callable[[Any], Any]
             ) -> Callable[[bytes], Any]:
    """The server's deserializer of a unary request."""
    return _parsing(message_type, from_proto, MAX_UNARY_REQUEST_BYTES)


def _serializing(to_proto: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    return lambda record: to_proto(record).SerializeToString()


RPCS: dict[str, Rpc] = {
    "Handshake": Rpc(
        _serializing(handshake_request_to_proto),
        _request(pb.HandshakeRequest, handshake_request_from_proto),
        _serializing(session_to_proto),
        _parsing(pb.HandshakeResponse, session_from_proto)),
    "Register": Rpc(
        _identity, decode_register_request,
        _serializing(lambda r: pb.RegisterResponse(created=r.created, version=r.version,
                                                   layout=layout_to_proto(r.layout))),
        _parsing(pb.RegisterResponse, lambda m: Registration(
            created=m.created, version=m.version,
            layout=layout_from_proto(m.layout) or ModelLayout(())))),
    "Push": Rpc(
        _identity, decode_push_request,
        _serializing(push_result_to_proto), _parsing(pb.PushResponse, push_result_from_proto)),
    "Pull": Rpc(
        _serializing(lambda r: pb.PullRequest(session_id=r.session_id,
                                              min_version=r.min_version,
                                              tensors=list(r.tensors),
                                              held_version=r.held_version,
                                              shm_segment=r.shm_segment)),
        _request(pb.PullRequest, lambda m: PullRequest(
            session_id=m.session_id, min_version=m.min_version, tensors=tuple(m.tensors),
            held_version=m.held_version if m.HasField("held_version") else -1,
            shm_segment=m.shm_segment)),
        _identity, decode_pull_response),
    "Status": Rpc(
        _serializing(lambda include_hash: pb.StatusRequest(include_state_hash=include_hash)),
        _request(pb.StatusRequest, lambda m: bool(m.include_state_hash)),
        _serializing(status_to_proto), _parsing(pb.StatusResponse, status_from_proto)),
    "Heartbeat": Rpc(
        _serializing(lambda session_id: pb.HeartbeatRequest(session_id=session_id)),
        _request(pb.HeartbeatRequest, lambda m: str(m.session_id)),
        _serializing(lambda version: pb.HeartbeatResponse(version=version)),
        _parsing(pb.HeartbeatResponse, lambda m: int(m.version))),
    "JoinRound": Rpc(
        _serializing(lambda r: pb.JoinRoundRequest(session_id=r.session_id, round=r.round,
                                                   close=round_close_to_proto(r.close))),
        _request(pb.JoinRoundRequest, lambda m: RoundRequest(
            session_id=m.session_id, round=m.round,
            close=round_close_from_proto(m.close) if m.HasField("close") else None)),
        _serializing(lambda j: pb.JoinRoundResponse(
            round=j.round, sampled=j.sampled, sampled_count=j.sampled_count,
            last_close=round_close_to_proto(j.last_close), dp_clip_norm=j.dp_clip_norm,
            dp_noise_std=j.dp_noise_std, finished=j.finished)),
        _parsing(pb.JoinRoundResponse, lambda m: RoundJoin(
            round=m.round, sampled=m.sampled, sampled_count=m.sampled_count,
            last_close=(round_close_from_proto(m.last_close) if m.HasField("last_close")
                        else None),
            dp_clip_norm=m.dp_clip_norm, dp_noise_std=m.dp_noise_std, finished=m.finished))),
    "Leave": Rpc(
        _serializing(lambda session_id: pb.LeaveRequest(session_id=session_id)),
        _request(pb.LeaveRequest, lambda m: str(m.session_id)),
        _serializing(lambda _: pb.LeaveResponse()),
        _parsing(pb.LeaveResponse, lambda _: None)),
}
RPCS["GetState"] = Rpc(
    _serializing(lambda session_id: pb.StateRequest(session_id=session_id)),
    _request(pb.StateRequest, lambda m: str(m.session_id)),
    _serializing(lambda state: pb.StateResponse(state=state)),
    _parsing(pb.StateResponse, lambda m: bytes(m.state)))
RPCS["SetState"] = Rpc(
    _serializing(lambda r: pb.SetStateRequest(session_id=r.session_id, state=r.state)),
    # A whole shard's state: bounded by the message limit, not the unary request bound; a
    # server takes it only before it trained (core.set_state).
    _parsing(pb.SetStateRequest, lambda m: StateUpload(session_id=m.session_id,
                                                       state=bytes(m.state))),
    _serializing(lambda version: pb.SetStateResponse(version=version)),
    _parsing(pb.SetStateResponse, lambda m: int(m.version)))
RPCS.update(table_rpcs(Rpc, _parsing, _serializing, _identity))  # issue #16
RPCS["SecureAggregate"] = Rpc(  # issue #17
    _serializing(secagg_request_to_proto),
    # A masked input holds 4 bytes per model element: bounded by the message limit.
    _parsing(pb.SecAggRequest, secagg_request_from_proto),
    _serializing(secagg_reply_to_proto), _parsing(pb.SecAggResponse, secagg_reply_from_proto))
RPCS["Step"] = step_rpc(Rpc)  # issue #14: a small model's push and pull in one call
STREAMING = {"Register": "stream_unary", "Push": "stream_unary", "Pull": "unary_stream",
             "PullRows": "unary_stream", "PushRows": "stream_unary"}
