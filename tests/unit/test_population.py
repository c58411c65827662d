"""Sampling from a declared population (`--population N`, issue #17): clients that are not
connected are sampled all the same, and a round waits for every sampled one."""

from __future__ import annotations

import pytest
import torch

from paramserver.federated import strategies
from paramserver.federated.config import FederatedConfig
from paramserver.federated.sampling import sample_clients
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import Mode, Role
from tests.helpers import push_stream, register_stream


def _core(population: int, fraction: float) -> ParameterServerCore:
    fedavg = strategies.get("fedavg")
    return ParameterServerCore(ServerConfig(
        mode=Mode.FEDERATED, expected_workers=population, aggregation=fedavg.aggregation,
        optimizer=fedavg.server_optimizer,
        federated=FederatedConfig(fraction=fraction, seed=3, population=population)))


def test_a_round_samples_the_population_and_waits_for_every_sampled_client() -> None:
    core = _core(population=40, fraction=0.1)
    expected = sample_clients({f"client-{i}" for i in range(40)}, 0.1, 1, 3, 0)
    first = min(expected)
    session = core.handshake(first, Role.WORKER, [], []).session_id  # nobody else connected
    core.register(iter(register_stream(session, {"w": torch.zeros(4)})))
    joined = core.join_round(session, 0, 1.0)
    assert joined.sampled and joined.sampled_count == len(expected) == 4
    core.push(iter(push_stream(session, 0, {"w": torch.ones(4)})))
    core.leave(session)  # gone, but it pushed: its update still counts
    assert core.store.version == 0  # the other sampled clients have not come yet
    for client in sorted(expected)[1:]:
        other = core.handshake(client, Role.WORKER, [], []).session_id
        core.push(iter(push_stream(other, 0, {"w": torch.ones(4)})))
        core.leave(other)
    assert core.store.version == 1
    assert core.status().rounds[0].counted == tuple(sorted(expected))


def test_population_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="--population"):
        FederatedConfig(population=-1)
