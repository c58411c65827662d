"""Faults injected on real server and worker processes: SIGKILL (crash), SIGSTOP/SIGCONT
(freeze), SIGTERM (preemption), a slow worker, a shard killed mid-training or mid-checkpoint.

Every wait is bounded (`paramserver.polling.wait_for` raises WaitTimeout, a hang), every
process is ours and ended by pid when the cluster closes. The slow worker is the normal
worker run through `tests.straggler_worker` (a sleep injected before each push).
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from paramserver.cli.local_cluster import CLI, LocalCluster
from paramserver.polling import wait_for
from paramserver.server.checkpoint import CheckpointStore, read_checkpoint
from paramserver.server.store import state_digest
from tests.chaos import (
    WorkerSpec,
    hit_worker,
    restart_server,
    signal_process,
    spawn_worker,
    version_of,
    wait_exit,
)
from tests.server_faults import faulty_server
from workers.probes import probe_status as status
from workers.trainer import evaluate_server_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
LEASE_S = 2.0
MARGIN_S = 3.0  # scheduling slack on a loaded 2-core machine
BAR = 0.95


def _server_args(workers: int, *extra: str) -> list[str]:
    return ["--workers", str(workers), "--lease-timeout", str(LEASE_S), "--log-level", "INFO",
            *extra]


def _report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP])
def test_sync_step_closes_without_a_dead_or_frozen_worker(cluster: LocalCluster,
                                                          fault: signal.Signals) -> None:
    [(server, address)] = cluster.start_servers(1, _server_args(4))
    reports = [cluster.run_dir / f"w{r}.json" for r in range(4)]
    workers = [spawn_worker(cluster, address, WorkerSpec(r, 4), 10, reports[r])
               for r in range(4)]
    trial = hit_worker(address, workers[3], "worker-3", fault)
    assert trial.evicted == tuple(e for e in trial.evicted if e.startswith("worker-3@"))
    assert trial.evicted_after_s <= LEASE_S + MARGIN_S
    assert trial.step_closed_after_s <= LEASE_S + MARGIN_S + 2
    if fault is signal.SIGSTOP:
        signal_process(workers[3], signal.SIGCONT)  # wakes, is refused, rejoins
    for worker in workers[:3] if fault is signal.SIGKILL else workers:
        assert wait_exit(worker, 120) == 0, worker.log_tail()
    accuracy, _ = evaluate_server_model(address)
    assert accuracy >= BAR
    if fault is signal.SIGSTOP:
        assert _report(reports[3])["rejoins"] >= 1  # came back with a new incarnation
    assert "evicted worker 'worker-3'" in server.log_path.read_text()


def test_sync_quorum_closes_steps_without_the_straggler(cluster: LocalCluster) -> None:
    [(_, address)] = cluster.start_servers(1, _server_args(3, "--sync-quorum", "2"))
    reports = [cluster.run_dir / f"w{r}.json" for r in range(3)]
    slow = WorkerSpec(2, 3, step_delay_s=0.5)
    workers = [spawn_worker(cluster, address, WorkerSpec(r, 3), 4, reports[r])
               for r in range(2)] + [spawn_worker(cluster, address, slow, 4, reports[2])]
    for worker in workers[:2]:
        assert wait_exit(worker, 120) == 0, worker.log_tail()
    fast = [_report(p) for p in reports[:2]]
    steps = fast[0]["steps"]
    # The straggler alone would need steps x 0.5 s; the fast workers did not wait for it.
    assert max(r["wall_s"] for r in fast) < steps * 0.5
    assert version_of(address) >= steps
    assert wait_exit(workers[2], 120) == 0
    assert _report(reports[2])["aborted_pushes"] > 0  # its late pushes were refused


@pytest.mark.parametrize("how", ["sigkill", "torn_checkpoint"])
def test_shard_restart_resumes_from_its_checkpoint(cluster: LocalCluster, how: str) -> None:
    every = 5
    args = _server_args(2, "--checkpoint-dir", str(cluster.run_dir / "ckpt-{index}"),
                        "--checkpoint-every", str(every))
    [(_, a0)] = cluster.start_servers(1, args)
    # Shard 1 (torn case): dies by SIGKILL in the middle of writing its 4th checkpoint.
    program = faulty_server(crash_in_checkpoint=4) if how == "torn_checkpoint" else CLI
    [(s1, a1)] = cluster.start_servers(1, args, first_index=1, program=program)
    servers = f"{a0},{a1}"
    reports = [cluster.run_dir / f"w{r}.json" for r in range(2)]
    workers = [spawn_worker(cluster, servers, WorkerSpec(r, 2), 10, reports[r])
               for r in range(2)]
    if how == "sigkill":
        wait_for("training under way", lambda: version_of(a1) >= 23, 90)
        signal_process(s1, signal.SIGKILL)
    assert wait_exit(s1, 90) == -signal.SIGKILL
    # Shard 0 cannot move on without shard 1 and is at most one step ahead of where shard 1
    # died; shard 1 checkpointed every `every` steps, so it lost at most that many.
    killed_at = version_of(a0)
    newest = CheckpointStore(cluster.run_dir / "ckpt-1").paths()[0]
    saved = read_checkpoint(newest)
    assert killed_at - saved.version <= every + 1
    port = int(a1.rsplit(":", 1)[1])
    restarted = restart_server(cluster, s1, port, [a.replace("{index}", "1") for a in args])
    resumed = status(a1)
    assert resumed is not None and resumed.restored_version == saved.version
    log_line = wait_for("restore logged", lambda: re.search(
        r"resumed shard 1 from the checkpoint of step (\d+) \(state (\w+)\)",
        restarted.log_path.read_text()), 10)
    # The restored state is bit-identical to the checkpoint's.
    assert log_line.group(2) == state_digest(saved.version, saved.params)
    for worker in workers:
        assert wait_exit(worker, 150) == 0, worker.log_tail()
    assert all(_report(p)["rejoins"] >= 1 for p in reports)
    accuracy, _ = evaluate_server_model(servers)
    assert accuracy >= BAR


def test_sigterm_drains_and_writes_a_final_checkpoint(cluster: LocalCluster) -> None:
    args = _server_args(1, "--checkpoint-dir", str(cluster.run_dir / "ckpt"))
    [(server, address)] = cluster.start_servers(1, args)
    report = cluster.run_dir / "w0.json"
    worker = spawn_worker(cluster, address, WorkerSpec(0, 1), 2, report)
    assert wait_exit(worker, 90) == 0
    version = version_of(address)
    signal_process(server, signal.SIGTERM)
    assert wait_exit(server, 15) == 0
    final = read_checkpoint(CheckpointStore(cluster.run_dir / "ckpt").paths()[0])
    assert final.version == version


def test_ssp_bounds_the_lead_and_a_late_joiner_converges(cluster: LocalCluster) -> None:
    # Three workers apply their pushes one by one: a smaller step than sync's lr 0.1.
    [(_, address)] = cluster.start_servers(1, _server_args(2, "--mode", "ssp", "--staleness",
                                                           "2", "--lr", "0.05"))
    reports = [cluster.run_dir / f"w{r}.json" for r in range(3)]
    workers = [spawn_worker(cluster, address, WorkerSpec(0, 2), 8, reports[0]),
               spawn_worker(cluster, address, WorkerSpec(1, 2, step_delay_s=0.02), 8,
                            reports[1])]
    wait_for("training under way", lambda: version_of(address) >= 40, 90)
    late = WorkerSpec(2, 3, ("--data", "replicate"))
    workers.append(spawn_worker(cluster, address, late, 3, reports[2]))
    leads = []
    while any(w.process.poll() is None for w in workers):
        current = status(address)
        if current is not None:
            leads.append(current.max_lead)
        time.sleep(0.2)
        assert len(leads) < 600, "the job did not finish within 120 s"
    assert all(w.process.returncode == 0 for w in workers)
    assert max(leads) <= 2  # the server's record: nobody ever ran more than 2 steps ahead
    # The job converges: the final global model reaches the bar. A worker's own figure is
    # the global model when *it* finished, possibly while the others were still moving it.
    accuracy, _ = evaluate_server_model(address)
    assert accuracy >= BAR
    assert min(_report(p)["accuracy"] for p in reports) >= 0.85
