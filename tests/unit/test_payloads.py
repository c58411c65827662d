"""The client's codec hot path: pushed slices encode like the codec, pulled chunks decode
in place through the Codec interface."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.codecs import PULL_CODECS, make_codec
from paramserver.codecs.base import to_dense
from paramserver.codecs.streaming import payload_bytes
from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.transport import chunk_ranges
from paramserver.types import PullHeader, TensorSpec
from workers.payloads import PullDecoder, encode_routes
from workers.routes import Route
from workers.tensor_io import HostMirror, host_bytes

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _route(param: torch.Tensor, start: int, length: int) -> Route:
    """Elements [start, start + length) of `param`, stored as tensor 'p/0'."""
    item = param.element_size()
    return Route(TensorSpec("p/0", (length,), param.dtype), "p", start * item, length * item)


def _stream(codec_name: str, values: torch.Tensor, elements_per_chunk: int
            ) -> list[tuple[int, memoryview]]:
    """(encoded byte offset, read-only chunk) as the server cuts a pull of `values`."""
    codec = make_codec(codec_name)
    width = codec.max_payload_nbytes(1, values.dtype)
    return [(start * width, memoryview(bytes(codec.encode(values[start:end]).numpy())))
            for start, end in chunk_ranges(values.numel(), elements_per_chunk)]


@settings(max_examples=60, deadline=None)
@given(codec_name=st.sampled_from(PULL_CODECS), dtype=st.sampled_from(DTYPES),
       size=st.integers(1, 300), data=st.data())
def test_pulled_chunks_decode_like_the_codec_in_place(codec_name: str, dtype: torch.dtype,
                                                      size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, size - 1))
    length = data.draw(st.integers(1, size - start))
    per_chunk = data.draw(st.integers(1, length))
    sent = torch.randn(length, generator=torch.Generator().manual_seed(size)).to(dtype)
    param = torch.zeros(size, dtype=dtype)
    before = param.clone()
    route = _route(param, start, length)
    decoder = PullDecoder(0, make_codec(codec_name), {"p/0": route},
                          {"p": HostMirror(param).writable_values(param)})
    decoder.on_header(PullHeader(version=1, tensors=(route.stored,)))
    for offset, chunk in _stream(codec_name, sent, per_chunk):
        decoder.sink(0, offset, chunk)

    codec = make_codec(codec_name)
    expected = to_dense(codec.decode(codec.encode(sent), length, dtype), length, dtype)
    torch.testing.assert_close(param[start:start + length], expected, atol=0, rtol=0)
    torch.testing.assert_close(param[:start], before[:start], atol=0, rtol=0)
    torch.testing.assert_close(param[start + length:], before[start + length:], atol=0, rtol=0)


def test_a_pull_refuses_surplus_bytes_and_split_elements() -> None:
    param = torch.zeros(8)
    route = _route(param, 0, 4)
    targets = {"p": HostMirror(param).writable_values(param)}
    fp16 = PullDecoder(3, make_codec("fp16"), {"p/0": route}, targets)
    fp16.on_header(PullHeader(version=1, tensors=(route.stored,)))
    with pytest.raises(InvalidArgument, match="shard 3 sent too many bytes for tensor 0"):
        fp16.sink(0, 4, memoryview(bytes(6)))
    with pytest.raises(InvalidArgument, match="splits a 2-byte element"):
        fp16.sink(0, 1, memoryview(bytes(2)))
    raw = PullDecoder(3, make_codec("none"), {"p/0": route}, targets)
    raw.on_header(PullHeader(version=1, tensors=(route.stored,)))
    with pytest.raises(InvalidArgument, match="too many bytes"):
        raw.sink(0, 8, memoryview(bytes(12)))
    with pytest.raises(FailedPrecondition, match="does not match the attached model"):
        raw.on_header(PullHeader(version=1, tensors=(TensorSpec("p/0", (5,), torch.float32),)))
    with pytest.raises(FailedPrecondition, match="cannot pull with codec 'topk'"):
        PullDecoder(0, make_codec("topk:ratio=0.5"), {"p/0": route}, targets)


@pytest.mark.parametrize("codec_name", ["none", "fp16", "topk:ratio=0.25", "qsgd:bits=4"])
def test_pushed_slices_are_the_codec_payloads_of_the_routes(codec_name: str) -> None:
    grad = torch.randn(64, generator=torch.Generator().manual_seed(1))
    routes = [_route(grad, 0, 24), _route(grad, 24, 40)]
    codec = make_codec(codec_name)
    payloads = encode_routes(routes, {"p": grad}, codec, None, {"p": host_bytes(grad)})
    for route, streamed in zip(routes, payloads):
        payload = payload_bytes(streamed, 0, streamed.nbytes)  # qsgd's: made as read
        piece = grad[route.byte_start // 4:(route.byte_start + route.nbytes) // 4]
        if codec_name in ("none", "fp16"):  # deterministic codecs: the very bytes
            assert bytes(payload) == bytes(codec.encode(piece).numpy())
        decoded = to_dense(codec.decode(torch.frombuffer(bytearray(payload), dtype=torch.uint8),
                                        piece.numel(), piece.dtype), piece.numel(), piece.dtype)
        assert decoded.shape == piece.shape
