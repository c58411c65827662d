"""The Step call (issue #14): a small model's push and pull in one unary call each way.

It must train exactly as the streams do, refuse what a Push stream refuses with the same
code (and what its pull could not serve) without changing anything, and step aside for the
streams where a server does not offer it."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from torch import nn

from paramserver.optimizer import OptimizerConfig
from paramserver.proto import paramserver_pb2 as pb
from paramserver.proto import paramserver_pb2_grpc as pb_grpc
from paramserver.server.app import RunningServer, ServerHooks, start_server
from paramserver.server.config import ServerConfig
from paramserver.server.limits import ServerLimits
from paramserver.transport import channel_options
from paramserver.types import CodecSpec, Mode
from tests.conftest import ServerFactory
from workers import ParameterClient

SGD = OptimizerConfig(lr=0.1, momentum=0.9)
W = pb.TensorSpec(name="w", shape=[4], dtype=pb.FLOAT32)
BIG = pb.TensorSpec(name="big", shape=[32], dtype=pb.FLOAT32)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class MethodCounter(grpc.ServerInterceptor):
    """Counts the calls of each method (by its short name)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details)


def _train(address: str | list[str], workers: int, steps: int, step_call_bytes: int,
           codecs: str = "") -> dict[str, torch.Tensor]:
    """`workers` threads step a tiny model with fixed per-rank gradients; rank 0's model.
    `codecs`: the push and pull codec offered ("" for none)."""
    models: dict[int, nn.Module] = {}
    for rank in range(workers):  # one initial model, whichever worker registers it; built
        torch.manual_seed(0)  # here, as threads seeding torch's one generator at once race
        models[rank] = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))

    def worker(rank: int) -> None:
        model = models[rank]
        offer = CodecSpec.parse_list(codecs) if codecs else ()
        with ParameterClient(address, f"w{rank}", timeout_s=20, push_codecs=offer,
                             pull_codecs=offer, step_call_bytes=step_call_bytes) as client:
            client.attach(model)
            draw = torch.Generator().manual_seed(rank)  # distinct values: no top-k ties
            for _ in range(steps):
                for param in model.parameters():
                    param.grad = torch.randn(param.shape, generator=draw)
                client.step()

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return {n: p.detach().clone() for n, p in models[0].named_parameters()}


@pytest.mark.parametrize(("mode", "workers", "shards", "codecs"), [
    (Mode.SYNC, 2, 1, ""), (Mode.ASYNC, 1, 1, ""),
    (Mode.SYNC, 2, 2, ""),  # a Step call per shard
    # error feedback up, compressed (delta) pulls down; exact: approx samples its threshold
    (Mode.SYNC, 2, 1, "topk:ratio=0.3,mode=exact"),
])
def test_step_calls_train_bit_identically_to_the_streams(server_factory: ServerFactory,
                                                         mode: Mode, workers: int,
                                                         shards: int, codecs: str) -> None:
    results = {}
    for step_call_bytes in (0, 1 << 20):
        counter = MethodCounter()
        servers = [server_factory(hooks=ServerHooks(interceptors=[counter]), mode=mode,
                                  expected_workers=workers, optimizer=SGD)
                   for _ in range(shards)]
        params = _train([s.address for s in servers], workers, 5, step_call_bytes, codecs)
        results[step_call_bytes] = (params, [s.core.store.state_hash() for s in servers],
                                    servers[0].core.store.version)
        calls = 5 * workers * shards
        used = counter.calls["Step"], counter.calls["Push"]
        assert used == ((0, calls) if step_call_bytes == 0 else (calls, 0))
    (streamed, streamed_hash, version), (called, called_hash, called_version) = (
        results[0], results[1 << 20])
    assert version == called_version == 5
    assert streamed_hash == called_hash  # the server's parameters and momentum, bit for bit
    for name, value in streamed.items():
        assert torch.equal(value, called[name]), name


def test_a_server_that_does_not_offer_it_gets_the_streams(server_factory: ServerFactory
                                                          ) -> None:
    counter = MethodCounter()
    server = server_factory(hooks=ServerHooks(interceptors=[counter]), mode=Mode.SYNC,
                            expected_workers=1, optimizer=SGD,
                            limits=ServerLimits(max_step_call_bytes=0))
    _train(server.address, 1, 3, 1 << 20)
    assert counter.calls["Step"] == 0 and counter.calls["Push"] == 3
    assert server.core.store.version == 3


def test_a_model_larger_than_the_offer_gets_the_streams(server_factory: ServerFactory) -> None:
    counter = MethodCounter()
    server = server_factory(hooks=ServerHooks(interceptors=[counter]), mode=Mode.SYNC,
                            expected_workers=1, optimizer=SGD,
                            limits=ServerLimits(max_step_call_bytes=64))  # model: 138 B
    _train(server.address, 1, 2, 1 << 20)
    assert counter.calls["Step"] == 0 and counter.calls["Push"] == 2


def test_waiting_step_calls_take_long_poll_slots_not_the_pool() -> None:
    """Two sync workers on a server with 3 RPC threads: each Step waits for the other in
    a long-poll slot, and a thread stays free for everything else."""
    server = start_server(ServerConfig(mode=Mode.SYNC, expected_workers=2, optimizer=SGD,
                                       limits=ServerLimits(max_long_polls=2)), max_threads=3)
    try:
        _train(server.address, 2, 4, 1 << 20)
        assert server.core.store.version == 4
    finally:
        server.stop(0.5)


# ---- refusals: the Push stream's code, and nothing changes ----------------------------------


@pytest.fixture
def target(server_factory: ServerFactory):  # type: ignore[no-untyped-def]
    server = server_factory(mode=Mode.ASYNC, expected_workers=1,
                            optimizer=OptimizerConfig(lr=1.0, momentum=0.0),
                            limits=ServerLimits(max_step_call_bytes=100))
    stub = pb_grpc.ParameterServerStub(grpc.insecure_channel(server.address,
                                                             options=channel_options()))
    session = stub.Handshake(pb.HandshakeRequest(worker_id="w", role=pb.WORKER), timeout=10)
    assert session.step_call_bytes == 100
    stub.Register(iter([
        pb.RegisterRequest(header=pb.RegisterHeader(
            session_id=session.session_id, layout=pb.ModelLayout(tensors=[W, BIG]),
            values_follow=True)),
        pb.RegisterRequest(chunk=pb.TensorChunk(tensor=0, data=np.ones(4, "<f4").tobytes())),
        pb.RegisterRequest(chunk=pb.TensorChunk(tensor=1,
                                                data=np.ones(32, "<f4").tobytes()))]),
        timeout=10)
    return server, stub, session


def _header(session: pb.HandshakeResponse, sequence: int, **fields: Any) -> pb.PushHeader:
    values = {"session_id": session.session_id, "step": 0, "num_samples": 1,
              "tensors": [W], "incarnation": session.incarnation, "sequence": sequence}
    return pb.PushHeader(**{**values, **fields})


def _chunk(values: list[float], tensor: int = 0) -> pb.TensorChunk:
    return pb.TensorChunk(tensor=tensor, data=np.asarray(values, "<f4").tobytes())


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


NAN = [float("nan"), 0.0, 0.0, 0.0]
PUSH_REFUSALS: dict[str, Any] = {  # header fields, chunks: refused alike on a Push stream and a Step call
    "non-finite gradient": ({}, [_chunk(NAN)]),
    "unknown tensor": ({"tensors": [pb.TensorSpec(name="nope", shape=[4],
                                                   dtype=pb.FLOAT32)]}, [_chunk([1] * 4)]),
    "wrong shape": ({"tensors": [pb.TensorSpec(name="w", shape=[5], dtype=pb.FLOAT32)]},
                    [_chunk([1] * 5)]),
    "too many bytes": ({}, [_chunk([1] * 6)]),
    "unknown session": ({"session_id": "not-a-session"}, [_chunk([1] * 4)]),
    "a step from the future": ({"step": 7}, [_chunk([1] * 4)]),
}


@pytest.mark.parametrize("case", sorted(PUSH_REFUSALS))
def test_a_refused_step_gets_the_push_streams_code_and_changes_nothing(target, case: str  # type: ignore[no-untyped-def]
                                                                        ) -> None:
    server, stub, session = target
    fields, chunks = PUSH_REFUSALS[case]
    before = server.core.store.state_hash()
    pushed = _code(lambda: stub.Push(iter(
        [pb.PushRequest(header=_header(session, 1, **fields))]
        + [pb.PushRequest(chunk=c) for c in chunks]), timeout=10))
    stepped = _code(lambda: stub.Step(pb.StepRequest(
        header=_header(session, 2, **fields), chunks=chunks, tensors=["w"]), timeout=10))
    assert stepped == pushed != grpc.StatusCode.OK, case
    assert server.core.store.state_hash() == before and server.core.store.version == 0
    # Both refusals used up their sequence (but for a session the server does not know, which
    # never reaches the ledger): the next push follows on and is applied.
    following = 1 if case == "unknown session" else 3
    answer = stub.Step(pb.StepRequest(header=_header(session, following),
                                      chunks=[_chunk([1] * 4)], tensors=["w"]), timeout=10)
    assert answer.push.applied and answer.header.version == 1
    assert np.frombuffer(answer.chunks[0].data, "<f4").tolist() == [0.0] * 4  # 1 - 1.0 * 1


STEP_REFUSALS: dict[str, Any] = {  # what only a Step can get wrong: refused before its push is applied
    "pull of an unknown tensor": ({}, [_chunk([1] * 4)], ["nope"],
                                  grpc.StatusCode.NOT_FOUND),
    "pulled tensors larger than the offer": ({}, [_chunk([1] * 4)], [],
                                             grpc.StatusCode.RESOURCE_EXHAUSTED),
    "push payload larger than the offer": (
        {"tensors": [BIG]}, [_chunk([1] * 32)], ["w"], grpc.StatusCode.RESOURCE_EXHAUSTED),
    "a part of a push": ({"more_parts": True}, [_chunk([1] * 4)], ["w"], INVALID),
    "no header": (None, [_chunk([1] * 4)], ["w"], INVALID),
}


@pytest.mark.parametrize("case", sorted(STEP_REFUSALS))
def test_a_step_whose_pull_cannot_be_served_changes_nothing(target, case: str  # type: ignore[no-untyped-def]
                                                            ) -> None:
    server, stub, session = target
    fields, chunks, tensors, code = STEP_REFUSALS[case]
    before = server.core.store.state_hash()
    header = _header(session, 1, **fields) if fields is not None else None
    assert _code(lambda: stub.Step(pb.StepRequest(header=header, chunks=chunks,
                                                  tensors=tensors), timeout=10)) == code
    assert server.core.store.state_hash() == before and server.core.store.version == 0
    answer = stub.Step(pb.StepRequest(header=_header(session, 2 if header else 1),
                                      chunks=[_chunk([1] * 4)], tensors=["w"]), timeout=10)
    assert answer.push.applied and answer.header.version == 1


def test_a_server_with_step_calls_off_answers_unimplemented(server_factory: ServerFactory
                                                            ) -> None:
    server: RunningServer = server_factory(mode=Mode.ASYNC,
                                           limits=ServerLimits(max_step_call_bytes=0))
    stub = pb_grpc.ParameterServerStub(grpc.insecure_channel(server.address,
                                                             options=channel_options()))
    session = stub.Handshake(pb.HandshakeRequest(worker_id="w", role=pb.WORKER), timeout=10)
    assert session.step_call_bytes == 0
    assert _code(lambda: stub.Step(pb.StepRequest(header=_header(session, 1)),
                                   timeout=10)) == grpc.StatusCode.UNIMPLEMENTED
