"""The streaming methods' messages: headers through protobuf, chunks through the fast path
in `paramserver.wire`; and records stored as protobuf bytes (checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from paramserver import wire
from paramserver.proto import paramserver_pb2 as pb
from paramserver.serde.records import (
    layout_from_proto,
    layout_to_proto,
    plan_from_proto,
    plan_to_proto,
    push_header_from_proto,
    push_header_to_proto,
    spec_from_proto,
    spec_to_proto,
)
from paramserver.serde.shm import ranges_from_proto, ranges_to_proto
from paramserver.types import (
    ModelLayout,
    PartitionPlan,
    PullHeader,
    PushHeader,
    RegisterHeader,
)


def _wrapper_decoder(
    wrapper: type[Any], header_field: str, header_from: Callable[[Any], Any]
) -> Callable[[bytes], Any]:
    """A deserializer returning the decoded header record or a `wire.Chunk`."""
    header_type = type(getattr(wrapper(), header_field))

    def decode(message: bytes) -> Any:
        try:
            field, body = wire.split_wrapper(message)
            if field == wire.CHUNK_FIELD and body is not None:
                return wire.decode_chunk(body)
            if field == 1 and body is not None:
                return header_from(header_type.FromString(body.tobytes()))
        except (wire.WireError, DecodeError, ValueError, TypeError, KeyError,
                OverflowError) as exc:  # raising here would be INTERNAL, and applied
            return MalformedMessage(f"cannot decode {wrapper.__name__}: {exc}")
        return MalformedMessage(f"{wrapper.__name__} carries neither a header nor a chunk")

    return decode


class MalformedMessage:
    """Returned by deserializers instead of raising, so handlers can answer INVALID_ARGUMENT.

    (An exception inside a grpc deserializer surfaces as INTERNAL with no useful message,
    and ends a client stream early, so what arrived before it would be applied.)
    `too_large`: refused for its size (RESOURCE_EXHAUSTED), not its content.
    """

    def __init__(self, reason: str, too_large: bool = False) -> None:
        self.reason = reason
        self.too_large = too_large


def encode_register_header(header: RegisterHeader) -> bytes:
    message = pb.RegisterHeader(session_id=header.session_id,
                                layout=layout_to_proto(header.layout),
                                values_follow=header.values_follow,
                                plan=plan_to_proto(header.plan), shard_index=header.shard_index)
    return pb.RegisterRequest(header=message).SerializeToString()


def register_header_from_proto(msg: pb.RegisterHeader) -> RegisterHeader:
    return RegisterHeader(msg.session_id, layout_from_proto(msg.layout), msg.values_follow,
                          plan_from_proto(msg.plan), msg.shard_index)


def encode_push_header(header: PushHeader) -> bytes:
    return pb.PushRequest(header=push_header_to_proto(header)).SerializeToString()


def encode_pull_header(header: PullHeader) -> bytes:
    message = pb.PullHeader(version=header.version,
                            tensors=[spec_to_proto(t) for t in header.tensors],
                            delta_from=header.delta_from, shm=ranges_to_proto(header.shm))
    return pb.PullResponse(header=message).SerializeToString()


def pull_header_from_proto(msg: pb.PullHeader) -> PullHeader:
    return PullHeader(version=msg.version, tensors=tuple(spec_from_proto(t) for t in msg.tensors),
                      delta_from=msg.delta_from if msg.HasField("delta_from") else -1,
                      shm=ranges_from_proto(msg.shm) if msg.HasField("shm") else None)


decode_register_request = _wrapper_decoder(pb.RegisterRequest, "header",
                                           register_header_from_proto)
decode_push_request = _wrapper_decoder(pb.PushRequest, "header", push_header_from_proto)
decode_pull_response = _wrapper_decoder(pb.PullResponse, "header", pull_header_from_proto)


def layout_to_bytes(layout: ModelLayout | None) -> bytes:
    return layout_to_proto(layout).SerializeToString()


def layout_from_bytes(data: bytes) -> ModelLayout | None:
    return layout_from_proto(pb.ModelLayout.FromString(data))


def plan_to_bytes(plan: PartitionPlan | None) -> bytes:
    return plan_to_proto(plan).SerializeToString()


def plan_from_bytes(data: bytes) -> PartitionPlan | None:
    return plan_from_proto(pb.PartitionPlan.FromString(data))


