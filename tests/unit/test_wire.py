"""The chunk fast path must agree byte for byte with the generated protobuf code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paramserver import serde, wire
from paramserver.proto import paramserver_pb2 as pb

WRAPPERS = [pb.PushRequest, pb.PullResponse, pb.RegisterRequest]
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)


@pytest.mark.parametrize("wrapper", WRAPPERS)
@given(tensor=uint32, offset=uint64, data=st.binary(max_size=3000))
def test_encode_matches_protobuf(wrapper, tensor, offset, data) -> None:  # type: ignore[no-untyped-def]
    expected = wrapper(chunk=pb.TensorChunk(tensor=tensor, offset=offset, data=data))
    assert wire.encode_chunk(tensor, offset, data) == expected.SerializeToString()


@pytest.mark.parametrize("wrapper", WRAPPERS)
@given(tensor=uint32, offset=uint64, data=st.binary(max_size=3000))
def test_protobuf_parses_fast_path_output(wrapper, tensor, offset, data) -> None:  # type: ignore[no-untyped-def]
    parsed = wrapper.FromString(wire.encode_chunk(tensor, offset, data))
    assert parsed.WhichOneof("kind") == "chunk"
    assert (parsed.chunk.tensor, parsed.chunk.offset, parsed.chunk.data) == (tensor, offset, data)


@given(tensor=uint32, offset=uint64, data=st.binary(max_size=3000))
def test_decode_accepts_any_field_order_and_unknown_fields(tensor, offset, data) -> None:  # type: ignore[no-untyped-def]
    # Fields in reverse order plus an unknown varint field 9 and an unknown LEN field 10.
    inner = (b"\x1a" + wire.encode_varint(len(data)) + data
             + b"\x10" + wire.encode_varint(offset) + b"\x08" + wire.encode_varint(tensor)
             + b"\x48\x07" + b"\x52\x02hi")
    message = b"\x12" + wire.encode_varint(len(inner)) + inner
    chunk = pb.PushRequest.FromString(message).chunk  # valid protobuf, says the reference
    assert (chunk.tensor, chunk.offset, chunk.data) == (tensor, offset, data)
    decoded = serde.decode_push_request(message)
    assert isinstance(decoded, wire.Chunk)
    assert (decoded.tensor, decoded.offset, bytes(decoded.data)) == (tensor, offset, data)


def test_decoded_payload_is_a_view_not_a_copy() -> None:
    message = wire.encode_chunk(1, 0, b"x" * 4096)
    decoded = serde.decode_push_request(message)
    assert isinstance(decoded, wire.Chunk)
    assert decoded.data.obj is message  # zero-copy: the view points into the received bytes


def test_header_goes_through_protobuf() -> None:
    header = pb.PushHeader(session_id="s", step=3, num_samples=7,
                           tensors=[pb.TensorSpec(name="w", shape=[2, 3], dtype=pb.FLOAT32)])
    decoded = serde.decode_push_request(pb.PushRequest(header=header).SerializeToString())
    assert decoded.session_id == "s" and decoded.step == 3 and decoded.num_samples == 7
    assert decoded.tensors[0].shape == (2, 3)


@pytest.mark.parametrize("garbage", [b"\x12\x05ab", b"\x12",
                                     b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                                     b"\x00\x01", b"", b"\x0f"])
def test_malformed_messages_are_reported_not_raised(garbage: bytes) -> None:
    decoded = serde.decode_push_request(garbage)
    assert isinstance(decoded, serde.MalformedMessage)
    assert "PushRequest" in decoded.reason
