"""`paramserver federated --simulate --lazy` (issue #17): clients created only for the rounds
they are sampled in, against a server sampling the declared population."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from paramserver.cli.local_federation import LocalFederation, run_local_federation
from paramserver.federated import strategies
from paramserver.federated.config import FederatedConfig
from paramserver.federated.sampling import sample_clients
from paramserver.server.config import ServerConfig
from paramserver.types import Mode
from workers.federated import LocalTraining

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_lazy_population_trains_exactly_the_sampled_clients(tmp_path: Path) -> None:
    fedavg = strategies.get("fedavg")
    sampling = FederatedConfig(fraction=0.1, seed=5, population=40)
    server = ServerConfig(mode=Mode.FEDERATED, expected_workers=1,
                          aggregation=fedavg.aggregation, optimizer=fedavg.server_optimizer,
                          federated=sampling)
    job = LocalFederation(server=server, training=LocalTraining(lr=0.05, momentum=0.0),
                          clients=40, rounds=3, simulate=True, lazy=True)
    report = run_local_federation(job, tmp_path, lambda r, a: None)
    assert report.rounds == 3 and not report.skipped_rounds and not report.dropouts
    population = {f"client-{i}" for i in range(40)}
    for close in report.shard_rounds[0]:
        expected = tuple(sorted(sample_clients(population, 0.1, 1, 5, close["round"])))
        assert close["sampled"] == close["counted"] == expected
    assert sum(report.client_examples) == 1347 and len(report.client_examples) == 40
    assert report.peak_rss_mb["local"] > 0 and report.peak_rss_mb["server"] > 0
    with pytest.raises(ValueError, match="--lazy"):
        LocalFederation(server=dataclasses.replace(server, federated=FederatedConfig()),
                        training=job.training, clients=40, simulate=True, lazy=True)
