"""Federated rounds on a sharded model (issue #17, docs/wire.md section 5d): shard 0 samples
and closes each round, the other shards close it with exactly the clients it counted, so an
update that missed one shard counts on none, and 2 shards train as 1 does."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from paramserver.errors import Unavailable
from paramserver.federated import strategies
from paramserver.federated.config import FederatedConfig
from paramserver.server.app import RunningServer, start_server
from paramserver.server.config import ServerConfig
from paramserver.types import Mode
from workers.federated import LocalTraining
from workers.parameter_client import ParameterClient

pytestmark = pytest.mark.timeout(120)


def _fedavg(clients: int, fraction: float = 1.0, timeout_s: float = 60.0) -> ServerConfig:
    strategy = strategies.get("fedavg")
    return ServerConfig(mode=Mode.FEDERATED, expected_workers=clients,
                        aggregation=strategy.aggregation, optimizer=strategy.server_optimizer,
                        federated=FederatedConfig(fraction=fraction, round_timeout_s=timeout_s))


@pytest.fixture
def two_shards() -> Iterator[list[RunningServer]]:
    servers = [start_server(_fedavg(3)) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop(0.5)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))


def _lost(*_: Any, **__: Any) -> Any:
    raise Unavailable("test: the push was lost on the way")


@pytest.mark.parametrize("lost_on", [0, 1], ids=["leader", "follower"])
def test_an_update_that_missed_a_shard_counts_on_none(two_shards: list[RunningServer],
                                                      lost_on: int) -> None:
    address = ",".join(s.address for s in two_shards)
    clients = [ParameterClient(address, f"client-{i}", timeout_s=10.0) for i in range(3)]
    try:
        models = [_model() for _ in clients]
        for client, model in zip(clients, models):
            client.attach(model)
        start = {n: p.detach().clone() for n, p in models[0].named_parameters()}
        assert all(c.join_round(0).sampled for c in clients)
        clients[2].connections[lost_on].push = _lost  # type: ignore[method-assign]
        for value, (client, model) in zip((0.1, 0.3, 5.0), zip(clients, models)):
            for param in model.parameters():
                param.grad = torch.full_like(param, value)  # global - local
            if client is clients[2]:
                with pytest.raises(Unavailable):
                    client.push(num_samples=1)
            else:
                client.push(num_samples=1)
        clients[2].connections[0].leave()  # gone: the leader closes without it
        # client-0 learns how the leader closed round 0 and forwards it to the follower,
        # which drops client-2's update if it holds it.
        assert clients[0].join_round(1).round == 1
        assert clients[0].pull(1) == 1
        for name, param in models[0].named_parameters():
            assert torch.allclose(param, start[name] - 0.2), name  # mean of 0.1 and 0.3
        closes = [s.core.status().rounds for s in two_shards]
        assert closes[0] == closes[1] and len(closes[0]) == 1
        assert closes[0][0].counted == ("client-0", "client-1")
        assert closes[0][0].sampled == ("client-0", "client-1", "client-2")
        assert all("client-2@0" in s.core.status().dropouts for s in two_shards)
    finally:
        for client in clients:
            client.close()


@pytest.mark.slow
def test_two_shards_train_as_one(tmp_path: Path) -> None:
    from paramserver.cli.local_federation import LocalFederation, run_local_federation

    reports = []
    for shards in (1, 2):
        job = LocalFederation(server=_fedavg(6, fraction=0.5),
                              training=LocalTraining(lr=0.05, momentum=0.0), clients=6,
                              rounds=6, simulate=True, shards=shards)
        run_dir = Path(tempfile.mkdtemp(dir=tmp_path))
        reports.append(run_local_federation(job, run_dir, lambda r, a: None))
    one, two = reports
    assert len(two.shard_rounds) == 2 and two.shard_rounds[0] == two.shard_rounds[1]
    rounds = [(r["round"], r["sampled"], r["counted"]) for r in two.shard_rounds[0]]
    assert rounds == [(r["round"], r["sampled"], r["counted"]) for r in one.shard_rounds[0]]
    assert [len(r[1]) for r in rounds] == [3] * 6  # half of 6 clients, every round
    assert len({r[1] for r in rounds}) > 1  # the sample changes from round to round
    # Bit-identical (issue #17): every shard sums a round's updates in client-id order and
    # applies the same elementwise step to its slice, so the split changes no bit.
    assert two.model_sha256 == one.model_sha256
    missed = {*one.unobserved_rounds, *two.unobserved_rounds}  # scored with a later model
    assert [a for r, a in enumerate(two.round_accuracy, 1) if r not in missed] == \
        [a for r, a in enumerate(one.round_accuracy, 1) if r not in missed]
    assert two.round_accuracy[-1] >= 0.7


def test_a_round_the_leader_skips_is_skipped_on_every_shard() -> None:
    servers = [start_server(dataclasses.replace(
        _fedavg(3), federated=FederatedConfig(round_timeout_s=0.5, min_completion_rate=1.0)))
        for _ in range(2)]
    address = ",".join(s.address for s in servers)
    clients = [ParameterClient(address, f"client-{i}", timeout_s=10.0) for i in range(3)]
    try:
        models = [_model() for _ in clients]
        for client, model in zip(clients, models):
            client.attach(model)
        start = {n: p.detach().clone() for n, p in models[0].named_parameters()}
        for client, model in zip(clients[:2], models):  # client-2 never reports
            for param in model.parameters():
                param.grad = torch.ones_like(param)
            client.push(num_samples=1)  # held, or dropped if the round already timed out
        assert clients[0].join_round(1).round == 1  # after the timeout: skipped
        assert clients[0].pull(1) == 1
        for name, param in models[0].named_parameters():
            assert torch.equal(param, start[name]), name
        statuses = [s.core.status() for s in servers]
        assert statuses[0].rounds == statuses[1].rounds and statuses[0].rounds[0].skipped
        assert statuses[0].skipped_rounds == statuses[1].skipped_rounds == (0,)
        assert statuses[0].dropouts == statuses[1].dropouts
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop(0.5)
