"""The examples run as documented: the embedded loop matches plain training, and the source
document's two snippets (data-parallel, federated averaging) work on this framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from paramserver.cli.local_cluster import LocalCluster
from paramserver.optimizer import OptimizerConfig
from paramserver.types import Aggregation, Mode
from tests.conftest import ServerFactory
from workers import FedAvg, attach

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _start(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(EXAMPLES / script), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def _result(process: subprocess.Popen[str]) -> dict:  # type: ignore[type-arg]
    try:
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_embedded_loop_with_two_workers_matches_the_plain_loop() -> None:
    with tempfile.TemporaryDirectory(prefix="ps-embed-") as run_dir, \
            LocalCluster(Path(run_dir)) as cluster:
        [(_, address)] = cluster.start_servers(1, ["--mode", "sync", "--workers", "2",
                                                   "--lr", "0.1", "--momentum", "0.9"])
        plain = _start("embed_existing_loop.py")
        ranks = [_start("embed_existing_loop.py", "--servers", address,
                        env={"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
                 for r in range(2)]
        alone = _result(plain)["accuracy"]
        together = [_result(p) for p in ranks]
    assert [r["rank"] for r in together] == [0, 1]
    assert together[0]["accuracy"] == together[1]["accuracy"]  # both hold the server's model
    assert alone >= 0.95 and together[0]["accuracy"] >= 0.95
    assert abs(together[0]["accuracy"] - alone) <= 0.02, (alone, together)


def test_data_parallel_example_trains() -> None:
    result = _result(_start("data_parallel.py", "--workers", "2", "--epochs", "10"))
    assert len(result["accuracy"]) == 2 and min(result["accuracy"]) >= 0.95


def test_federated_averaging_example_converges() -> None:
    result = _result(_start("federated_averaging.py", "--clients", "4", "--rounds", "8"))
    losses = result["round_loss"]
    assert losses[-1] < 0.05 * losses[0] and losses[-1] < 0.1, losses


def test_fedavg_gives_the_example_weighted_average_of_client_models(
        server_factory: ServerFactory) -> None:
    server = server_factory(mode=Mode.SYNC, expected_workers=2,
                            aggregation=Aggregation.WEIGHTED,
                            optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0))
    models = [nn.Linear(3, 2), nn.Linear(3, 2)]
    clients = [attach(m, server.address, worker_id=f"c{i}", overlap=False)
               for i, m in enumerate(models)]
    try:
        averaging = [FedAvg(c) for c in clients]
        start = [p.detach().clone() for p in models[0].parameters()]
        local = []
        for i, model in enumerate(models):  # "local training": any change to the model
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * (i + 1))
            local.append([p.detach().clone() for p in model.parameters()])
        threads = [threading.Thread(target=averaging[i].step, args=(n,))
                   for i, n in enumerate((30, 10))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for j, param in enumerate(models[0].parameters()):
            expected = (30 * local[0][j] + 10 * local[1][j]) / 40
            torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(list(models[1].parameters())[j].detach(), expected)
            assert not torch.equal(param, start[j])
    finally:
        for client in clients:
            client.close()
