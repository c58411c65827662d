"""Hand-written fast path for the one hot message: a TensorChunk inside a oneof wrapper.

PushRequest, PullResponse and RegisterRequest each wrap `TensorChunk chunk = 2`. Building a
protobuf message, serialising it, parsing it and reading `.data` each copy the payload,
which costs 2-5x the throughput of raw bytes (issue #2). The protobuf wire format of these
messages is simple, so this module writes and reads it directly:

    wrapper := tag(2, LEN) varint(len(chunk)) chunk
    chunk   := [tag(1, VARINT) varint(tensor)] [tag(2, VARINT) varint(offset)]
               [tag(3, LEN) varint(len(data)) data]

Encoding produces exactly the bytes `SerializeToString()` produces (proto3 omits fields at
their default value); decoding accepts any valid encoding of the .proto, field order and
unknown fields included, and returns the payload as a zero-copy memoryview. Both properties
are tested against the generated code in tests/unit/test_wire.py.
"""

from __future__ import annotations

from dataclasses import dataclass

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
CHUNK_FIELD = 2  # field number of `TensorChunk chunk` in every wrapper message


class WireError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


@dataclass(frozen=True)
class Chunk:
    """A decoded TensorChunk; `data` is a view into the received message, not a copy."""

    tensor: int
    offset: int
    data: memoryview


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))  # the varints of 0-127


def encode_varint(value: int) -> bytes:
    if 0 <= value < 0x80:  # tags, tensor indices, small lengths: most varints (issue #14)
        return _ONE_BYTE[value]
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


_TENSOR_TAG, _OFFSET_TAG, _DATA_TAG = _tag(1, _VARINT), _tag(2, _VARINT), _tag(3, _LEN)
_CHUNK_TAG = _tag(CHUNK_FIELD, _LEN)


def chunk_prefix(tensor: int, offset: int, data_len: int) -> bytes:
    """Every byte of a chunk wrapper message that comes before the payload."""
    inner = b"".join((_TENSOR_TAG + encode_varint(tensor) if tensor else b"",
                      _OFFSET_TAG + encode_varint(offset) if offset else b"",
                      _DATA_TAG + encode_varint(data_len) if data_len else b""))
    return _CHUNK_TAG + encode_varint(len(inner) + data_len) + inner


def encode_chunk(tensor: int, offset: int, data: bytes | memoryview) -> bytes:
    """A serialised wrapper message carrying one chunk; the payload is copied once."""
    view = memoryview(data).cast("B")
    return b"".join((chunk_prefix(tensor, offset, view.nbytes), view))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # one byte: most varints
        return buf[pos], pos + 1
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def iter_fields(buf: memoryview) -> list[tuple[int, int, int | memoryview]]:
    """(field, wire_type, value) for every field of one message; LEN values are views."""
    fields: list[tuple[int, int, int | memoryview]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]  # one-byte keys and lengths read inline: no call (issue #14)
        key, pos = (key, pos + 1) if key < 0x80 else _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        value: int | memoryview
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == _LEN:
            length = buf[pos] if pos < end else 0x80
            length, pos = (length, pos + 1) if length < 0x80 else _read_varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {field} claims {length} bytes, {end - pos} remain")
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type in (_I64, _I32):
            width = 8 if wire_type == _I64 else 4
            if pos + width > end:
                raise WireError(f"truncated fixed-width field {field}")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        else:
            raise WireError(f"unsupported wire type {wire_type} for field {field}")
        fields.append((field, wire_type, value))
    return fields


def split_wrapper(message: bytes) -> tuple[int, memoryview | None]:
    """The oneof field number set in a wrapper message and its encoded value.

    Returns (0, None) for an empty message. As protobuf does, the last oneof member wins.
    """
    chosen: tuple[int, memoryview | None] = (0, None)
    for field, wire_type, value in iter_fields(memoryview(message)):
        if isinstance(value, memoryview) and wire_type == _LEN:
            chosen = (field, value)
    return chosen


def decode_chunk(body: memoryview) -> Chunk:
    """Decode an encoded TensorChunk without copying its payload."""
    tensor = offset = 0
    data = memoryview(b"")
    for field, wire_type, value in iter_fields(body):
        if field == 1 and wire_type == _VARINT:
            tensor = int(value)  # type: ignore[arg-type]
        elif field == 2 and wire_type == _VARINT:
            offset = int(value)  # type: ignore[arg-type]
        elif field == 3 and wire_type == _LEN:
            data = value  # type: ignore[assignment]
    if tensor > 0xFFFFFFFF:
        raise WireError(f"tensor index {tensor} does not fit uint32")
    return Chunk(tensor, offset, data)
