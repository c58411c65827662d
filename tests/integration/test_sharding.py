"""Several servers holding one model: the recorded plan rules, and mismatches are refused."""

from __future__ import annotations

import grpc
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.sharding import PartitionPlan, TensorSlice, plan_partition
from paramserver.types import ModelLayout, TensorSpec
from workers import ParameterClient
from workers.connection import ServerConnection
from workers.models import digits_mlp


def _job(server_factory, shards: int) -> list[str]:  # type: ignore[no-untyped-def]
    addresses = [server_factory(expected_workers=2).address for _ in range(shards)]
    with ParameterClient(addresses, "w0", timeout_s=10) as first:
        assert first.attach(digits_mlp(seed=1))
    return addresses


def test_late_joiner_uses_the_recorded_plan_and_the_servers_parameters(server_factory) -> None:  # type: ignore[no-untyped-def]
    addresses = _job(server_factory, 3)
    model = digits_mlp(seed=99)
    with ParameterClient(addresses, "w1", timeout_s=10) as late:
        assert late.attach(model) is False
        assert late.plan == late.sessions[0].plan and late.plan.num_shards == 3
    reference = digits_mlp(seed=1)
    for (name, value), (_, expected) in zip(model.named_parameters(),
                                            reference.named_parameters()):
        assert torch.equal(value, expected), name


def test_servers_listed_in_another_order_are_refused(server_factory) -> None:  # type: ignore[no-untyped-def]
    addresses = _job(server_factory, 2)
    with ParameterClient(list(reversed(addresses)), "w1", timeout_s=10) as client, \
            pytest.raises(ParamServerError, match="listed at position") as info:
        client.attach(digits_mlp())
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_different_number_of_servers_is_refused(server_factory) -> None:  # type: ignore[no-untyped-def]
    addresses = _job(server_factory, 2)
    with ParameterClient(addresses[:1], "w1", timeout_s=10) as client, \
            pytest.raises(ParamServerError, match="split over 2 servers"):
        client.attach(digits_mlp())


def test_a_disagreeing_plan_is_refused_by_the_server(server_factory) -> None:  # type: ignore[no-untyped-def]
    addresses = _job(server_factory, 2)
    layout = ModelLayout(tuple(TensorSpec.of(n, p) for n, p in digits_mlp().named_parameters()))
    recorded = plan_partition(layout, 2)
    # Same shard-0 tensors, but claiming a 1-shard plan: the server must refuse it.
    connection = ServerConnection(addresses[0], timeout_s=10)
    connection.handshake("w1")
    before = connection.status()
    with pytest.raises(ParamServerError) as info:
        connection.register(recorded.shard_layout(0), None, plan_partition(layout, 1), 0)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT  # layout is not that plan's shard
    # A plan that agrees on shard 0 but splits shard 1 differently is refused too.
    piece = next(s for s in recorded.slices if s.shard == 1 and s.length > 1)
    half = piece.length // 2
    other_slices = [s for s in recorded.slices if s != piece] + [
        TensorSlice(piece.tensor, piece.start, half, 1),
        TensorSlice(piece.tensor, piece.start + half, piece.length - half, 1)]
    other = PartitionPlan(layout, 2, tuple(other_slices))
    assert other.shard_layout(0) == recorded.shard_layout(0)
    with pytest.raises(ParamServerError, match="partition plan differs") as info:
        connection.register(recorded.shard_layout(0), None, other, 0)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert connection.status().version == before.version
    connection.close()


def test_push_and_pull_reach_every_shard(server_factory) -> None:  # type: ignore[no-untyped-def]
    servers = [server_factory(expected_workers=1) for _ in range(2)]
    big = torch.nn.Linear(512, 512)
    with ParameterClient([s.address for s in servers], "w0", timeout_s=10) as client:
        client.attach(big)
        big.weight.grad = torch.ones_like(big.weight)
        big.bias.grad = torch.ones_like(big.bias)
        results = client.step()
        assert all(s.core.members.snapshot()[0].pushes == 1 for s in servers)
    assert len(results) == 2 and all(r.applied for r in results)
    assert [s.core.store.version for s in servers] == [1, 1]
    assert all(not s.core.members.snapshot() for s in servers)  # it left on close
