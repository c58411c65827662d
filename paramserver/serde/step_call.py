"""The Step call's messages (issue #14, docs/wire.md section 5f), through the chunk fast path.

A StepRequest is the messages of a Push stream concatenated (PushRequest's `header = 1` and
`chunk = 2` are StepRequest's `header` and repeated `chunks`) followed by the pull's fields;
a StepResponse is the messages of a Pull stream concatenated, followed by the push's answer
(`push = 3`). So both sides reuse the stream encoders. The server never parses a request's
payloads into protobuf objects: its chunks decode to zero-copy `wire.Chunk` views, as on
the streams, and one that does not decode is refused by the push checks in its place. The
client parses the answer with protobuf (`decode_step_answer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from paramserver import wire
from paramserver.proto import paramserver_pb2 as pb
from paramserver.serde.records import (
    push_header_from_proto,
    push_result_from_proto,
    push_result_to_proto,
)
from paramserver.serde.streams import (
    MalformedMessage,
    encode_push_header,
    pull_header_from_proto,
)
from paramserver.step_call import StepAnswer, StepCall
from paramserver.types import PushHeader

_VARINT, _LEN = 0, 2
_DECODE_ERRORS = (wire.WireError, DecodeError, ValueError, TypeError, KeyError, OverflowError)


def _int64(value: int) -> int:
    """A varint read as protobuf's int64 (negative values travel as 2**64 + value)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _field(number: int, body: bytes) -> bytes:
    return wire.encode_varint(number << 3 | _LEN) + wire.encode_varint(len(body)) + body


def encode_step_call(call: StepCall) -> bytes:
    """Client: the push's header and chunks as a Push stream encodes them, then the pull."""
    parts: list[bytes | memoryview] = []
    for message in call.push:
        if isinstance(message, PushHeader):
            parts.append(encode_push_header(message))
        elif isinstance(message, wire.Chunk):  # joined once below: the payload copied once
            view = memoryview(message.data).cast("B")
            parts += (wire.chunk_prefix(message.tensor, message.offset, view.nbytes), view)
    parts.append(pb.StepRequest(min_version=call.min_version, tensors=list(call.tensors),
                                held_version=call.held_version).SerializeToString())
    return b"".join(parts)


def decode_step_call(data: bytes) -> StepCall | MalformedMessage:
    """Server: the request as a Push stream's messages (header first) and the pull's fields.
    A chunk that does not decode stays in place as a `MalformedMessage` (refused by the
    push checks, as on a stream); bytes that do not parse at all make the whole request one."""
    try:
        fields = wire.iter_fields(memoryview(data))
        headers = [_header(v) for n, _, v in fields if n == 1 and isinstance(v, memoryview)]
        chunks = [_chunk(v) for n, _, v in fields if n == 2 and isinstance(v, memoryview)]
        pull = _pull_fields(fields)
    except _DECODE_ERRORS as exc:
        return MalformedMessage(f"cannot decode StepRequest: {exc}")
    if len(headers) > 1:
        return MalformedMessage("a StepRequest carries one PushHeader")
    return StepCall(push=(*headers, *chunks), **pull)


def _pull_fields(fields: list[tuple[int, int, int | memoryview]]) -> dict[str, Any]:
    """min_version, tensors and held_version; a known field of the wrong type is an error."""
    pull: dict[str, Any] = {"tensors": []}
    for number, wire_type, value in fields:
        if number in (3, 5) and wire_type == _VARINT:
            pull["min_version" if number == 3 else "held_version"] = _int64(int(value))
        elif number == 4 and isinstance(value, memoryview):
            pull["tensors"].append(bytes(value).decode("utf-8"))
        elif number <= 5 and wire_type != _LEN:
            raise wire.WireError(f"field {number} has wire type {wire_type}")
    pull["tensors"] = tuple(pull["tensors"])
    return pull


def _header(body: memoryview) -> object:
    try:
        return push_header_from_proto(pb.PushHeader.FromString(body.tobytes()))
    except _DECODE_ERRORS as exc:
        return MalformedMessage(f"cannot decode the StepRequest's PushHeader: {exc}")


def _chunk(body: memoryview) -> object:
    try:
        return wire.decode_chunk(body)
    except wire.WireError as exc:
        return MalformedMessage(f"cannot decode a StepRequest chunk: {exc}")


def encode_step_answer(answer: StepAnswer) -> bytes:
    """Server: the encoded PullResponse messages joined, then the push's answer."""
    push = push_result_to_proto(answer.push).SerializeToString()
    return b"".join([*answer.pull, _field(3, push)])  # type: ignore[list-item]


def decode_step_answer(data: bytes) -> StepAnswer | MalformedMessage:
    """Client: the push's answer and the pull as a Pull stream yields it (header, chunks).

    Parsed by protobuf whole, unlike the server's side: the answer holds at most
    --max-step-call-bytes of values, and copying those once more costs the client less
    than reading its fields in Python (a 40 KB model's answer: 20 us -> 8 us)."""
    try:
        message = pb.StepResponse.FromString(data)
        if not (message.HasField("header") and message.HasField("push")):
            return MalformedMessage("a StepResponse carries a PullHeader and a PushResponse")
        chunks = [wire.Chunk(c.tensor, c.offset, memoryview(c.data)) for c in message.chunks]
        return StepAnswer(push=push_result_from_proto(message.push),
                          pull=(pull_header_from_proto(message.header), *chunks))
    except _DECODE_ERRORS as exc:
        return MalformedMessage(f"cannot decode StepResponse: {exc}")


def step_rpc(rpc: Callable[..., Any]) -> Any:
    """`serde.RPCS["Step"]`: client encodes the call and decodes the answer, server the
    other way round."""
    return rpc(encode_step_call, decode_step_call, encode_step_answer, decode_step_answer)
