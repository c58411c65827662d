"""Exactly-once pushes over the network: a reply lost after the push was applied, a replayed
old sequence, a fenced incarnation. Each leaves the server applying a push exactly once or
not at all (compared by a hash of the state)."""

from __future__ import annotations

import grpc
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.server.app import ServerHooks
from paramserver.types import Mode, TensorSpec
from tests.conftest import ServerFactory
from tests.server_faults import DropReplies
from workers import ParameterClient
from workers.connection import ServerConnection

LR = 0.5
PLAIN_SGD = OptimizerConfig(name="sgd", lr=LR, momentum=0.0)


def _big_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(512, 256)  # 513 KiB of weights: above gRPC's 256 KiB retry limit


@pytest.mark.parametrize("step_call_bytes", [0, 1 << 20])  # streams; one Step call (#14)
@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.ASYNC])
def test_a_push_whose_reply_was_lost_is_applied_once(server_factory: ServerFactory,
                                                     mode: Mode, step_call_bytes: int) -> None:
    hooks = ServerHooks(interceptors=[DropReplies([1])])  # the first push's reply is lost
    server = server_factory(hooks=hooks, mode=mode, expected_workers=1, optimizer=PLAIN_SGD)
    model = _big_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ParameterClient(server.address, "w0", timeout_s=10,
                         step_call_bytes=step_call_bytes) as client:
        client.attach(model)
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        for name, param in model.named_parameters():
            param.grad = grads[name]
        client.step()
        connection = client.connections[0]
        assert connection.retries >= 1 and connection.duplicates == 1
    assert server.core.store.version == 1  # applied once, though it arrived twice
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), start[name] - LR * grads[name])


def _raw(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy())


def test_replayed_sequence_is_aborted_and_fenced_incarnation_refused(
        server_factory: ServerFactory) -> None:
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=PLAIN_SGD)
    model = _big_model()
    spec = TensorSpec.of("bias", model.bias)
    with ParameterClient(server.address, "w0", timeout_s=10) as client:
        client.attach(model)
        connection = client.connections[0]
        connection.push(0, [spec], [_raw(torch.ones(256))])
        connection.push(1, [spec], [_raw(torch.ones(256))])
        before = server.core.store.state_hash()
        connection._sequence = 0  # the next push reuses sequence 1: a replay
        with pytest.raises(ParamServerError) as replay:
            connection.push(1, [spec], [_raw(torch.ones(256))])
        assert replay.value.code == grpc.StatusCode.ABORTED
        assert "replays an older push" in replay.value.message
        assert server.core.store.state_hash() == before

        # The same worker opens a new session (a restart): the old incarnation is fenced.
        newer = ServerConnection(server.address, 10)
        newer.handshake("w0")
        assert newer.session.incarnation == connection.session.incarnation + 1
        connection._sequence = 10
        with pytest.raises(ParamServerError) as fenced:
            connection.push(2, [spec], [_raw(torch.ones(256))])
        assert fenced.value.code == grpc.StatusCode.FAILED_PRECONDITION
        # A push on the new session that claims the old incarnation is fenced as well.
        newer.session = type(newer.session)(**{**newer.session.__dict__,
                                               "incarnation": connection.session.incarnation})
        with pytest.raises(ParamServerError) as stale:
            newer.push(2, [spec], [_raw(torch.ones(256))])
        assert stale.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert server.core.store.state_hash() == before
        newer.close()


def test_async_max_staleness_aborts_stale_gradients(server_factory: ServerFactory) -> None:
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=PLAIN_SGD,
                            max_staleness=2)
    model = _big_model()
    spec = TensorSpec.of("bias", model.bias)
    with ParameterClient(server.address, "w0", timeout_s=10) as client:
        client.attach(model)
        connection = client.connections[0]
        for step in range(4):
            connection.push(step, [spec], [_raw(torch.ones(256))])
        before = server.core.store.state_hash()
        with pytest.raises(ParamServerError) as info:
            connection.push(1, [spec], [_raw(torch.ones(256))])  # 3 updates old
        assert info.value.code == grpc.StatusCode.ABORTED
        assert "staleness 3 exceeds --max-staleness 2" in info.value.message
        assert server.core.store.state_hash() == before
        assert connection.push(2, [spec], [_raw(torch.ones(256))]).staleness == 2
