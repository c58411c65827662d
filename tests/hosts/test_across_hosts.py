"""Jobs across hosts with links of their own (network namespaces on one machine, see
testbed/): a sharded sync job, a partitioned and healed worker host, a federated run.

Servers bind their host's address (10.77.0.x); workers reach them by IP. Every wait is
bounded (a WaitTimeout is a hang); every process is ended by pid and every namespace
deleted when the bed closes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from paramserver.polling import wait_for
from testbed import Host, NetBed
from tests.chaos import wait_exit
from tests.hosts.conftest import BedFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
BAR = 0.95
LEASE_S = 2.0


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _worker(bed: NetBed, index: int, servers: str, rank: int, workers: int, epochs: int,
            step_delay_s: float = 0.0, *extra: str) -> tuple[Any, Path]:
    """`paramserver worker` on host `index`; with a step delay, paced by sleeping before
    every push (tests.straggler_worker), so a fault lands mid-job on any machine."""
    report = bed.run_dir / f"worker-{rank}.json"
    args = ["--servers", servers, "--rank", str(rank), "--num-workers", str(workers),
            "--worker-id", f"worker-{rank}", "--epochs", str(epochs), "--report", str(report),
            "--timeout", "20", "--log-level", "INFO", *extra]
    if not step_delay_s:
        return bed.spawn(bed.host(index), f"worker-{rank}", ["worker", *args]), report
    return bed.spawn(bed.host(index), f"worker-{rank}", ["--step-delay", str(step_delay_s),
                                                         *args],
                     program=[sys.executable, "-m", "tests.straggler_worker"],
                     env={"PYTHONPATH": str(REPO)}), report


def test_sharded_sync_job_across_four_hosts(netbed: BedFactory) -> None:
    """2 server hosts hold one shard each; 2 worker hosts reach them by IP at 1 Gbit/s."""
    bed = netbed(4, "1gbit")
    addresses = [bed.start_server(bed.host(i), ["--workers", "2", "--metrics-port", "9100"])[1]
                 for i in (0, 1)]
    assert addresses == ["10.77.0.1:50051", "10.77.0.2:50051"]
    servers = ",".join(addresses)
    workers = [_worker(bed, 2 + rank, servers, rank, 2, 10) for rank in (0, 1)]
    for managed, _ in workers:
        assert wait_exit(managed, 180) == 0, managed.log_tail()
    reports = [_report(path) for _, path in workers]
    assert all(r["accuracy"] >= BAR for r in reports), reports
    assert {r["version"] for r in reports} == {reports[0]["version"]}  # one model, in step
    shards = [bed.status(bed.host(2), a) for a in addresses]
    assert [(s["shard_index"], s["num_shards"]) for s in shards if s] == [(0, 2), (1, 2)]
    # Each shard's metrics, scraped across the bridge from a worker host.
    scrape = ("import urllib.request as u; print(u.urlopen('http://10.77.0.2:9100/metrics', "
              "timeout=10).read().decode())")
    done = bed.run(bed.host(3), [sys.executable, "-c", scrape])
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("paramserver_steps_")]
    assert steps == [f"paramserver_steps_total {float(reports[0]['version'])}"]


def test_partitioned_worker_host_is_evicted_and_rejoins_after_healing(
        netbed: BedFactory) -> None:
    """`loss 100%` on a worker host's link for longer than the lease: the server evicts it
    and the others go on; healed, it rejoins and the job ends above the bar."""
    bed = netbed(4, "1gbit")
    server, address = bed.start_server(bed.host(0), ["--workers", "3", "--lease-timeout",
                                                     str(LEASE_S), "--log-level", "INFO"])
    # 8 epochs of 21 steps at >= 100 ms a step: the job outlasts the fault on any machine.
    # Every worker sees all the data (replicate) in batches of 64: the steps the healed
    # worker takes alone at the end, after the others finished (it missed the steps of the
    # partition), neither skew the model towards one split nor add much noise.
    workers = [_worker(bed, 1 + rank, address, rank, 3, 8, 0.1, "--data", "replicate",
                       "--batch-size", "64") for rank in range(3)]
    observer = bed.host(1)  # a host whose link stays up

    def status() -> dict[str, Any] | None:
        return bed.status(observer, address)

    wait_for("training under way", lambda: (s := status()) and s["version"] >= 15, 90)
    victim = bed.host(3)  # worker-2's host
    bed.partition(victim)
    cut = time.monotonic()

    def evicted_at() -> int | None:
        """The step at which worker-2 was evicted ("worker-2@STEP"), once it was."""
        current = status()
        steps = [int(e.split("@")[1]) for e in (current["evicted"] if current else ())
                 if e.startswith("worker-2@")]
        return steps[0] + 1 if steps else None  # + 1: step 0 is a valid answer

    step = wait_for("eviction", evicted_at, 30) - 1
    assert time.monotonic() - cut <= LEASE_S + 8  # the lease, plus probes on 2 cores
    try:  # the other two go on without it
        wait_for("steps without the cut-off host", lambda: (s := status()) and
                 s["version"] >= step + 5, 30)
    except Exception:
        print(server.log_tail(60), *(w.log_tail(30) for w, _ in workers), sep="\n----\n")
        raise
    time.sleep(max(0.0, cut + 2 * LEASE_S + 1 - time.monotonic()))  # well past the lease
    bed.heal(victim)
    for managed, _ in workers:
        assert wait_exit(managed, 180) == 0, managed.log_tail()
    reports = [_report(path) for _, path in workers]
    print("accuracy per worker:", [round(r["accuracy"], 4) for r in reports])
    assert reports[2]["rejoins"] >= 1, reports[2]
    assert all(r["accuracy"] >= BAR for r in reports), reports
    final = status()
    assert final is not None and any(r.startswith("worker-2@") for r in final["rejoins"])


def test_federated_run_across_hosts(netbed: BedFactory) -> None:
    """One federated server host and three client hosts: every round closes with all
    three, and the global model learns."""
    bed = netbed(4, "100mbit")
    _, address = bed.start_server(bed.host(0), ["--mode", "federated", "--fraction", "1.0",
                                                "--min-clients", "3", "--round-timeout", "30"])
    clients = []
    for index in range(3):
        report = bed.run_dir / f"client-{index}.json"
        clients.append((bed.spawn(bed.host(1 + index), f"client-{index}", [
            "client", "--servers", address, "--index", str(index), "--clients", "3",
            "--rounds", "8", "--local-epochs", "2", "--report", str(report)]), report))
    for managed, _ in clients:
        assert wait_exit(managed, 180) == 0, managed.log_tail()
    assert all(_report(path)["rounds_trained"] >= 1 for _, path in clients)
    final = bed.status(bed.host(1), address)
    assert final is not None and final["version"] >= 8 and not final["skipped_rounds"]
    assert _accuracy_from(bed, bed.host(1), address) >= 0.9


def _accuracy_from(bed: NetBed, host: Host, address: str) -> float:
    """The test accuracy of the servers' model, read by an observer on `host`."""
    code = ("from workers.trainer import evaluate_server_model as e; "
            f"print(e({address!r})[0])")
    done = bed.run(host, [sys.executable, "-c", code], 120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])
