"""Each attack of issue #13 on the server, replayed against a real in-process server: the
documented status, and the state hash unchanged. Every test here failed before the fix."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from paramserver.optimizer import OptimizerConfig
from paramserver.proto import paramserver_pb2 as pb
from paramserver.proto import paramserver_pb2_grpc as pb_grpc
from paramserver.server.limits import ServerLimits
from paramserver.transport import channel_options
from paramserver.types import Mode

SGD = OptimizerConfig(lr=1.0, momentum=0.0)
W = pb.TensorSpec(name="w", shape=[4], dtype=pb.FLOAT32)
STEPS = pb.TensorSpec(name="steps", shape=[1], dtype=pb.INT64)
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def _stub(address: str) -> pb_grpc.ParameterServerStub:
    return pb_grpc.ParameterServerStub(grpc.insecure_channel(address, options=channel_options()))


def _handshake(stub: pb_grpc.ParameterServerStub, worker_id: str, codec: str = "none",
               timeout: float = 10.0, **params: str) -> pb.HandshakeResponse:
    return stub.Handshake(pb.HandshakeRequest(
        worker_id=worker_id, role=pb.WORKER,
        push_codecs=[pb.CodecSpec(name=codec, params=params)]), timeout=timeout)


def _register(stub: pb_grpc.ParameterServerStub, session: pb.HandshakeResponse) -> None:
    layout = pb.ModelLayout(tensors=[W, STEPS])
    stub.Register(iter([
        pb.RegisterRequest(header=pb.RegisterHeader(session_id=session.session_id,
                                                    layout=layout, values_follow=True)),
        pb.RegisterRequest(chunk=pb.TensorChunk(tensor=0, offset=0,
                                                data=np.ones(4, "<f4").tobytes())),
        pb.RegisterRequest(chunk=pb.TensorChunk(tensor=1, offset=0,
                                                data=np.zeros(1, "<i8").tobytes()))]),
        timeout=10)


def _push(session: pb.HandshakeResponse, step: int, payloads: dict[int, bytes],
          sequence: int = 0, specs: tuple[pb.TensorSpec, ...] = (W,)) -> list[pb.PushRequest]:
    header = pb.PushHeader(session_id=session.session_id, step=step, num_samples=1,
                           tensors=list(specs), incarnation=session.incarnation if sequence
                           else 0, sequence=sequence)
    return [pb.PushRequest(header=header)] + [
        pb.PushRequest(chunk=pb.TensorChunk(tensor=i, offset=0, data=data))
        for i, data in payloads.items()]


def _refused(code: grpc.StatusCode, call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        result = call(*args, timeout=10, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


@pytest.fixture
def job(server_factory):  # type: ignore[no-untyped-def]
    """A sync server (one worker) with a registered model, its stub and the worker's session."""
    server = server_factory(expected_workers=1, optimizer=SGD, lease_s=30.0,
                            limits=ServerLimits(max_sessions=8, max_long_polls=2))
    stub = _stub(server.address)
    session = _handshake(stub, "victim")
    _register(stub, session)
    return server, stub, session


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.ASYNC, Mode.SSP])
def test_a_non_finite_gradient_is_refused_in_every_mode(server_factory, mode: Mode,  # type: ignore[no-untyped-def]
                                                        bad: float) -> None:
    server = server_factory(mode=mode, expected_workers=1, optimizer=SGD)
    stub = _stub(server.address)
    session = _handshake(stub, "w")
    _register(stub, session)
    before = server.core.store.state_hash()
    grad = np.array([0.5, bad, 0.5, 0.5], "<f4").tobytes()
    assert "NaN or infinite" in _refused(INVALID, stub.Push, iter(_push(session, 0, {0: grad})))
    assert server.core.store.state_hash() == before


def test_nan_through_fp16_and_topk_is_refused(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=SGD)
    stub = _stub(server.address)
    owner = _handshake(stub, "owner")
    _register(stub, owner)
    before = server.core.store.state_hash()
    fp16 = _handshake(stub, "half", "fp16")
    grad = np.array([1, np.nan, 1, 1], "<f2").tobytes()
    _refused(INVALID, stub.Push, iter(_push(fp16, 0, {0: grad})))
    topk = _handshake(stub, "sparse", "topk", k="1")
    payload = (np.array([1], "<i8").tobytes() + np.array([np.inf], "<f4").tobytes()
               + np.array([2], "<i4").tobytes())
    _refused(INVALID, stub.Push, iter(_push(topk, 0, {0: payload})))
    assert server.core.store.state_hash() == before


def test_a_handshake_only_ghost_does_not_stall_a_sync_step(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=SGD, lease_s=30.0)
    stub = _stub(server.address)
    session = _handshake(stub, "real")
    _register(stub, session)
    _handshake(stub, "ghost")  # and it heartbeats, but never registers nor pushes
    reply = stub.Push(iter(_push(session, 0, {0: np.ones(4, "<f4").tobytes()})), timeout=10)
    assert reply.applied and reply.version == 1


def test_one_forged_sequence_cannot_poison_the_ledger(job) -> None:  # type: ignore[no-untyped-def]
    server, stub, session = job
    before = server.core.store.state_hash()
    forged = _push(session, 0, {}, sequence=2**64 - 1, specs=())
    assert "expected 1" in _refused(grpc.StatusCode.FAILED_PRECONDITION, stub.Push,
                                    iter(forged))
    assert server.core.store.state_hash() == before
    honest = stub.Push(iter(_push(session, 0, {0: np.ones(4, "<f4").tobytes()}, sequence=1)),
                       timeout=10)
    assert honest.applied  # the victim's own first push still goes through


def test_an_integer_tensor_in_a_push_changes_nothing(job) -> None:  # type: ignore[no-untyped-def]
    server, stub, session = job
    before = server.core.store.state_hash()
    both = _push(session, 0, {0: np.ones(4, "<f4").tobytes(), 1: np.ones(1, "<i8").tobytes()},
                 specs=(W, STEPS))
    _refused(INVALID, stub.Push, iter(both))
    assert server.core.store.state_hash() == before


def test_a_push_followed_by_an_undecodable_message_changes_nothing(job) -> None:  # type: ignore[no-untyped-def]
    server, _, session = job
    before = server.core.store.state_hash()
    channel = grpc.insecure_channel(server.address, options=channel_options())
    push = channel.stream_unary("/paramserver.v1.ParameterServer/Push")
    messages = [m.SerializeToString() for m in _push(session, 0, {0: np.ones(4, "<f4").tobytes()})]
    messages.append(b"\x0a\x03\xff\xff\xff")  # a whole header field; its bytes do not parse
    with pytest.raises(grpc.RpcError) as caught:
        push(iter(messages), timeout=10)
    assert caught.value.code() == INVALID
    assert server.core.store.state_hash() == before


def test_pulling_an_integer_tensor_under_fp16_is_refused(job) -> None:  # type: ignore[no-untyped-def]
    _, stub, _ = job
    observer = stub.Handshake(pb.HandshakeRequest(worker_id="viewer", role=pb.OBSERVER,
                                                  pull_codecs=[pb.CodecSpec(name="fp16")]))
    _refused(INVALID, stub.Pull, pb.PullRequest(session_id=observer.session_id))


@pytest.mark.parametrize(("codec", "params"), [
    ("qsgd", {"bucket": str(1 << 28)}), ("qsgd", {"bits": "inf"}), ("topk", {"k": "inf"}),
    ("randomk", {"seed": "inf"}), ("topk", {"ratio": "-1"}), ("topk", {"ratio": "nan"}),
    ("topk", {"colour": "blue"})])
def test_codec_parameters_out_of_range_are_refused(job, codec: str,  # type: ignore[no-untyped-def]
                                                   params: dict[str, str]) -> None:
    _, stub, _ = job
    details = _refused(grpc.StatusCode.FAILED_PRECONDITION, _handshake, stub, "w2", codec,
                       **params)
    assert "no common push codec" in details
    if "colour" in params:
        assert "known: k, min_k, mode, ratio" in details


def test_limits_on_ids_codec_strings_sessions_and_model_size(job) -> None:  # type: ignore[no-untyped-def]
    server, stub, session = job
    before = server.core.store.state_hash()
    huge = pb.TensorSpec(name="huge", shape=[1 << 20, 1 << 20], dtype=pb.FLOAT32)
    header = pb.RegisterHeader(session_id=session.session_id,
                               layout=pb.ModelLayout(tensors=[huge]), values_follow=True)
    _refused(INVALID, stub.Register, iter([pb.RegisterRequest(header=header)]))
    deep = pb.TensorSpec(name="deep", shape=[1] * 9, dtype=pb.FLOAT32)
    header = pb.RegisterHeader(session_id=session.session_id,
                               layout=pb.ModelLayout(tensors=[deep]), values_follow=True)
    _refused(INVALID, stub.Register, iter([pb.RegisterRequest(header=header)]))
    _refused(INVALID, _handshake, stub, "x" * 200)
    _refused(INVALID, _handshake, stub, "w", "topk", ratio="0." + "1" * 300)
    for index in range(7):  # 8 sessions: the victim's and 7 more
        _handshake(stub, f"w{index}")
    _refused(EXHAUSTED, _handshake, stub, "one-too-many")
    assert server.core.store.state_hash() == before


def test_unary_requests_are_small(job) -> None:  # type: ignore[no-untyped-def]
    _, stub, _ = job
    _refused(EXHAUSTED, stub.Heartbeat, pb.HeartbeatRequest(session_id="x" * (1 << 20)))


def test_long_polls_are_bounded_and_a_cancelled_one_frees_its_slot(job) -> None:  # type: ignore[no-untyped-def]
    server, stub, session = job
    calls = [stub.Pull(pb.PullRequest(session_id=session.session_id, min_version=99),
                       timeout=60) for _ in range(2)]
    started = [threading.Thread(target=lambda c=c: _drain(c)) for c in calls]
    for thread in started:
        thread.start()
    deadline = time.monotonic() + 10
    while server.core._long_polls.waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    _refused(EXHAUSTED, stub.Pull, pb.PullRequest(session_id=session.session_id,
                                                 min_version=99))
    for call in calls:
        call.cancel()
    deadline = time.monotonic() + 2  # released at once, not after max_wait_s
    while server.core._long_polls.waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.core._long_polls.waiting == 0
    for thread in started:
        thread.join(5)


def _drain(call) -> None:  # type: ignore[no-untyped-def]
    try:
        list(call)
    except grpc.RpcError:
        pass
