"""Codecs negotiated per connection, over a real server (issue #4)."""

from __future__ import annotations

import grpc
import pytest
import torch

from paramserver.codecs import CodecLimits, make_codec
from paramserver.codecs.base import to_dense
from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.types import CodecSpec, ModelLayout, TensorSpec
from tests.helpers import raw
from workers import ParameterClient
from workers.connection import ServerConnection

SGD = OptimizerConfig(lr=1.0, momentum=0.0)


def test_two_workers_with_different_codecs_share_one_step(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=2, optimizer=SGD)
    w = torch.zeros(1000)
    layout = ModelLayout((TensorSpec.of("w", w),))
    a, b = ServerConnection(server.address, 10), ServerConnection(server.address, 10)
    sa = a.handshake("a", push_codecs=[CodecSpec.parse("topk:ratio=0.01")])
    sb = b.handshake("b", push_codecs=[CodecSpec.parse("qsgd:bits=8"), CodecSpec("none")])
    assert str(sa.push_codec) == "topk:mode=approx,ratio=0.01"
    assert str(sb.push_codec) == "qsgd:bits=8,bucket=512"
    a.register(layout, [raw(w)])
    ga = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    gb = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    pa, pb = make_codec(sa.push_codec).encode(ga), make_codec(sb.push_codec).encode(gb)
    assert not a.push(0, layout.tensors, [memoryview(pa.numpy())]).applied
    assert b.push(0, layout.tensors, [memoryview(pb.numpy())]).applied
    expected = -(to_dense(make_codec(sa.push_codec).decode(pa, 1000, torch.float32), 1000,
                          torch.float32)
                 + make_codec(sb.push_codec).decode(pb, 1000, torch.float32).values) / 2
    torch.testing.assert_close(server.core.store.params["w"], expected, rtol=1e-6, atol=1e-6)
    codecs = {wk.worker_id: str(wk.push_codec) for wk in a.status().workers}
    assert codecs == {"a": str(sa.push_codec), "b": str(sb.push_codec)}


@pytest.mark.parametrize("codec, corrupt", [
    ("topk:ratio=0.01", lambda p: torch.cat([p[:-4], torch.tensor([10**6], dtype=torch.int32)
                                             .view(torch.uint8)])),
    ("qsgd:bits=8", lambda p: torch.cat([torch.tensor([float("nan")]).view(torch.uint8),
                                         p[4:]])),
    ("topk:ratio=0.01", lambda p: p[:-5]),
    ("fp16", lambda p: p[:-2]),
])
def test_payload_that_does_not_decode_is_invalid_argument_and_changes_nothing(
        server_factory, codec, corrupt) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=SGD)
    w = torch.zeros(1000)
    layout = ModelLayout((TensorSpec.of("w", w),))
    connection = ServerConnection(server.address, 10)
    session = connection.handshake("a", push_codecs=[CodecSpec.parse(codec)])
    connection.register(layout, [raw(w)])
    before = server.core.store.state_hash()
    payload = corrupt(make_codec(session.push_codec).encode(torch.randn(1000)))
    with pytest.raises(ParamServerError) as info:
        connection.push(0, layout.tensors, [memoryview(payload.contiguous().numpy())])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode" in info.value.message
    assert server.core.store.state_hash() == before and server.core.policy.report().pending_pushes == 0


def test_client_compresses_and_pulls_in_fp16(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=SGD,
                            codecs=CodecLimits(min_ratio=0.01))
    model = torch.nn.Linear(100, 50)
    with ParameterClient(server.address, "w", push_codecs=[CodecSpec.parse("topk:ratio=0.001")],
                         pull_codecs=[CodecSpec("fp16")]) as client:
        assert str(client.session.push_codec) == "topk:mode=approx,ratio=0.01"  # raised to min
        assert str(client.session.pull_codec) == "fp16"
        client.attach(model)
        torch.testing.assert_close(model.weight, server.core.store.params["weight"],
                                   atol=1e-3, rtol=1e-3)  # fp16 pull: close, not exact
        model.weight.grad = torch.ones_like(model.weight)
        model.bias.grad = torch.ones_like(model.bias)
        client.step()
        assert client.compression_ratio > 10
        assert client.dense_bytes_pushed == 4 * (100 * 50 + 50)


def test_error_feedback_is_on_by_default_for_biased_codecs_only(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=SGD)
    offers = {"topk": [CodecSpec.parse("topk:ratio=0.1")], "qsgd": [CodecSpec.parse("qsgd")]}
    with ParameterClient(server.address, "w", push_codecs=offers["topk"]) as topk:
        assert topk._feedback[0] is not None
    with ParameterClient(server.address, "w", push_codecs=offers["topk"],
                         error_feedback=False) as off:
        assert off._feedback[0] is None
    with ParameterClient(server.address, "w", push_codecs=offers["qsgd"]) as qsgd:
        assert qsgd._feedback[0] is None


@pytest.mark.parametrize("corrupt", ["late_code", "truncated"])
def test_qsgd_push_decoded_as_it_arrives_refuses_a_late_fault_and_changes_nothing(
        server_factory, corrupt) -> None:  # type: ignore[no-untyped-def]
    """The server decodes a qsgd push piece by piece while it arrives (server/arriving.py):
    a bad code in its last piece, after the first pieces decoded, still changes nothing."""
    server = server_factory(expected_workers=1, optimizer=SGD)
    w = torch.zeros(600_000)  # three pieces of the decoder, many chunks
    layout = ModelLayout((TensorSpec.of("w", w),))
    connection = ServerConnection(server.address, 10)
    connection.chunk_bytes = 1 << 16
    session = connection.handshake("a", push_codecs=[CodecSpec.parse("qsgd:bits=8")])
    connection.register(layout, [raw(w)])
    before = server.core.store.state_hash()
    payload = make_codec(session.push_codec).encode(torch.randn(600_000)).clone()
    if corrupt == "late_code":
        payload[-1] = 255  # codes go to 2 * 127 = 254
    else:
        payload = payload[:-1]
    with pytest.raises(ParamServerError) as info:
        connection.push(0, layout.tensors, [memoryview(payload.contiguous().numpy())])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode" in info.value.message
    assert server.core.store.state_hash() == before
    assert server.core.policy.report().pending_pushes == 0
    good = make_codec(session.push_codec).encode(torch.ones(600_000))
    assert connection.push(0, layout.tensors, [memoryview(good.numpy())]).applied
    torch.testing.assert_close(server.core.store.params["w"], -torch.ones(600_000))
