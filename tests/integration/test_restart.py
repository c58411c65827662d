"""A sync job whose server is SIGKILLed and restarted from its checkpoint, again and again,
is a sync job again each time: every worker ends on the same final version and model, as
good as the same job without a fault (issue #19)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from paramserver.cli.local_cluster import LocalCluster
from paramserver.polling import wait_for
from tests.chaos import WorkerSpec, restart_server, signal_process, spawn_worker, version_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
WORKERS = 3
EPOCHS = 10  # 150 steps of 3 workers on split digits
RESTARTS = 5
DOWN_S = 3.0  # how long the server stays down: the workers' retry backoffs drift apart


def _run_job(cluster: LocalCluster, tag: str, restarts: int) -> list[dict]:  # type: ignore[type-arg]
    """Train a 3-worker sync job, SIGKILLing and restarting its server `restarts` times
    while it trains; the workers' reports."""
    # A lease longer than a CPU-starved worker's pause: this test is about restarts, and an
    # eviction under load would let a worker drop out of lockstep for reasons of its own.
    args = ["--mode", "sync", "--workers", str(WORKERS), "--lease-timeout", "10",
            "--checkpoint-dir", str(cluster.run_dir / f"ckpt-{tag}"), "--checkpoint-every", "5",
            "--reform-timeout", "60", "--log-level", "INFO"]
    [(server, address)] = cluster.start_servers(1, args, first_index=len(cluster.processes))
    reports = [cluster.run_dir / f"{tag}-w{r}.json" for r in range(WORKERS)]
    workers = [spawn_worker(cluster, address, WorkerSpec(r, WORKERS, step_delay_s=0.03),
                            EPOCHS, reports[r], name=f"{tag}-worker-{r}")
               for r in range(WORKERS)]
    port = int(address.rsplit(":", 1)[1])
    for restart in range(restarts):
        # Kill it well inside the run, each time after it trained a few steps past a restart.
        floor = 12 + 20 * restart
        wait_for(f"version {floor}", lambda floor=floor: version_of(address) >= floor, 120)
        signal_process(server, signal.SIGKILL)
        assert server.process.wait(30) == -signal.SIGKILL
        time.sleep(DOWN_S)  # the workers' retry backoffs drift apart meanwhile
        server = restart_server(cluster, server, port, args)
    for worker in workers:
        assert worker.process.wait(240) == 0, worker.log_tail()
    return [json.loads(path.read_text()) for path in reports]


def test_restarted_sync_job_ends_on_one_model_each_time(cluster: LocalCluster) -> None:
    calm = _run_job(cluster, "calm", restarts=0)
    faulty = _run_job(cluster, "faulty", restarts=RESTARTS)
    for reports in (calm, faulty):
        versions = {r["version"] for r in reports}
        accuracies = {r["accuracy"] for r in reports}
        assert len(versions) == 1, f"workers ended on different versions {versions}"
        assert len(accuracies) == 1, f"one final model, yet accuracies {accuracies}"
    assert all(r["rejoins"] >= RESTARTS for r in faulty)  # every restart was noticed
    # Each restart went back to an older checkpoint and the workers redid those steps, in
    # the job's own numbering: the same number of job steps, more steps taken.
    assert faulty[0]["version"] == calm[0]["version"]
    assert all(f["steps"] > c["steps"] for f, c in zip(faulty, calm))
    assert abs(faulty[0]["accuracy"] - calm[0]["accuracy"]) <= 0.01
