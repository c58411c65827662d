"""A real server on 127.0.0.1:0: status codes on the wire, and a client built only from the
generated stub (as a client in another language would be), to keep the fast path honest."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paramserver.codecs import CodecLimits
from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.proto import paramserver_pb2 as pb
from paramserver.proto import paramserver_pb2_grpc as pb_grpc
from paramserver.transport import channel_options
from paramserver.types import CodecSpec, ModelLayout, Role, TensorSpec
from tests.helpers import raw
from workers.connection import ServerConnection

SGD = OptimizerConfig(lr=1.0, momentum=0.0)


def _stub(address: str) -> pb_grpc.ParameterServerStub:
    return pb_grpc.ParameterServerStub(grpc.insecure_channel(address, options=channel_options()))


def _connect(address: str, worker_id: str) -> ServerConnection:
    connection = ServerConnection(address, timeout_s=10)
    connection.handshake(worker_id)
    return connection


def test_generated_stub_client_trains_against_fast_path_server(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=SGD, chunk_bytes=4096)
    stub = _stub(server.address)
    session = stub.Handshake(pb.HandshakeRequest(worker_id="foreign", role=pb.WORKER,
                                                 push_codecs=[pb.CodecSpec(name="none")]))
    assert session.push_codec.name == "none" and session.mode == pb.SYNC
    values = np.arange(3000, dtype="<f4")
    spec = pb.TensorSpec(name="w", shape=[3000], dtype=pb.FLOAT32)
    layout = pb.ModelLayout(tensors=[spec])
    register = [pb.RegisterRequest(header=pb.RegisterHeader(
        session_id=session.session_id, layout=layout, values_follow=True))]
    register += [pb.RegisterRequest(chunk=pb.TensorChunk(tensor=0, offset=o,
                                                         data=values.tobytes()[o:o + 5000]))
                 for o in range(0, 12000, 5000)]
    assert stub.Register(iter(register)).created
    grad = np.full(3000, 0.5, dtype="<f4").tobytes()
    push = [pb.PushRequest(header=pb.PushHeader(session_id=session.session_id, step=0,
                                                 num_samples=1, tensors=[spec])),
            pb.PushRequest(chunk=pb.TensorChunk(tensor=0, offset=0, data=grad))]
    reply = stub.Push(iter(push))
    assert reply.applied and reply.version == 1
    responses = list(stub.Pull(pb.PullRequest(session_id=session.session_id, min_version=1)))
    assert responses[0].WhichOneof("kind") == "header" and responses[0].header.version == 1
    pulled = b"".join(r.chunk.data for r in responses[1:])
    assert len(responses) == 1 + 3  # 12000 bytes in 4096-byte chunks
    np.testing.assert_array_equal(np.frombuffer(pulled, "<f4"), values - 0.5)


def test_large_tensor_moves_past_grpc_message_limits(server_factory) -> None:  # type: ignore[no-untyped-def]
    """80 MB exceeds both gRPC's 4 MiB default and our 64 MiB cap: chunking must carry it."""
    server = server_factory(expected_workers=1, optimizer=SGD)
    connection = _connect(server.address, "big")
    weights = torch.randn(20_000_000)
    layout = ModelLayout((TensorSpec.of("big", weights),))
    connection.register(layout, [raw(weights)])
    grad = torch.full_like(weights, 0.25)
    assert connection.push(0, layout.tensors, [raw(grad)]).applied
    out = torch.empty_like(weights)
    target = out.view(torch.uint8).numpy()

    def sink(index: int, offset: int, data: memoryview) -> None:
        target[offset:offset + data.nbytes] = np.frombuffer(data, np.uint8)

    version = connection.pull(1, sink).version
    assert version == 1 and torch.equal(out, weights - 0.25)


def _stream(session_id: str, step: int, spec: pb.TensorSpec, payload: bytes,
            offset: int = 0) -> list[pb.PushRequest]:
    return [pb.PushRequest(header=pb.PushHeader(session_id=session_id, step=step, num_samples=1,
                                                 tensors=[spec])),
            pb.PushRequest(chunk=pb.TensorChunk(tensor=0, offset=offset, data=payload))]


def test_bad_input_gets_the_right_status_code_over_the_wire(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=2, optimizer=SGD)
    connection = _connect(server.address, "a")
    w = torch.ones(4)
    layout = ModelLayout((TensorSpec.of("w", w),))
    connection.register(layout, [raw(w)])
    stub, sid = _stub(server.address), connection.session_id
    spec = pb.TensorSpec(name="w", shape=[4], dtype=pb.FLOAT32)
    before = server.core.store.state_hash()
    cases = {
        "truncated": (_stream(sid, 0, spec, b"\0" * 8), grpc.StatusCode.INVALID_ARGUMENT,
                      "truncated"),
        "larger than declared": (_stream(sid, 0, spec, b"\0" * 20),
                                 grpc.StatusCode.INVALID_ARGUMENT, "larger than declared"),
        "unknown tensor": (_stream(sid, 0, pb.TensorSpec(name="x", shape=[4], dtype=pb.FLOAT32),
                                   b"\0" * 16), grpc.StatusCode.NOT_FOUND, "unknown tensor"),
        "wrong shape": (_stream(sid, 0, pb.TensorSpec(name="w", shape=[2, 2], dtype=pb.FLOAT32),
                                b"\0" * 16), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        "wrong dtype": (_stream(sid, 0, pb.TensorSpec(name="w", shape=[4], dtype=pb.FLOAT64),
                                b"\0" * 32), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        "not the current step": (_stream(sid, 3, spec, b"\0" * 16),
                                 grpc.StatusCode.FAILED_PRECONDITION, "step 3"),
        "garbage": ([pb.PushRequest()], grpc.StatusCode.INVALID_ARGUMENT, "neither"),
    }
    for name, (requests, code, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.Push(iter(requests), timeout=10)
        assert info.value.code() == code, name
        assert fragment in info.value.details(), (name, info.value.details())
    assert server.core.store.state_hash() == before
    assert server.core.policy.report().pending_pushes == 0
    other = ModelLayout((TensorSpec("w", (5,), torch.float32),))
    with pytest.raises(ParamServerError) as refused:
        _connect(server.address, "b").register(other, [raw(torch.ones(5))])
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_no_common_codec_fails_the_handshake(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(codecs=CodecLimits(allowed=("none", "fp16")))
    connection = ServerConnection(server.address, timeout_s=5)
    with pytest.raises(ParamServerError) as info:
        connection.handshake("a", Role.WORKER, [CodecSpec.parse("topk:ratio=0.01")])
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "topk:ratio=0.01" in info.value.message and "none, fp16" in info.value.message


def test_pull_deadline_and_health_and_status(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1)
    connection = _connect(server.address, "a")
    connection.register(ModelLayout((TensorSpec("w", (2,), torch.float32),)),
                        [raw(torch.zeros(2))])
    with pytest.raises(ParamServerError) as info:
        connection.pull(5, lambda *a: None, timeout_s=0.3)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    health = health_pb2_grpc.HealthStub(connection.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="paramserver.v1.ParameterServer"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    status = connection.status()
    assert status.version == 0 and status.layout is not None
    assert [w.worker_id for w in status.workers] == ["a"]
    assert connection.heartbeat() == 0
