"""torchrun across hosts: a two-node launch (`--nnodes 2 --nproc-per-node 2`, c10d
rendezvous on the first worker host) of the embedded loop (examples/embed_existing_loop.py)
against two server hosts, and an elastic restart (`--max-restarts 1`) after one rank's
process is killed mid-job: restarted at once, and late, after the other node's ranks had
finished (they wait at the job's end for the whole world, `workers.job_end`).

Hosts: h0 and h1 hold one shard each; h2 and h3 run one torchrun agent each (the
rendezvous store on h2). Every process runs inside the bed's namespaces and is ended by
pid, and every namespace deleted, when the bed closes (also on failure).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from paramserver.cli.local_cluster import ManagedProcess
from paramserver.polling import wait_for
from testbed import NetBed
from tests.chaos import wait_exit
from tests.hosts.conftest import BedFactory
from workers.data import load_digits_dataset, steps_per_epoch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "embed_existing_loop.py"
RDZV_PORT = 29400
WORLD = 4  # 2 nodes x 2 processes
STEPS = steps_per_epoch(len(load_digits_dataset().y_train), WORLD, "split", 32)  # an epoch
JOB_EPOCHS = 60  # 660 steps: 15 s on a quiet machine, so a kill lands mid-job


def _servers(bed: NetBed, lease_s: float) -> str:
    """Two sync shards for WORLD workers, one on h0 and one on h1."""
    args = ["--workers", str(WORLD), "--lease-timeout", str(lease_s), "--log-level", "INFO"]
    return ",".join(bed.start_server(bed.host(i), args)[1] for i in (0, 1))


def _torchrun(bed: NetBed, node: int, servers: str, epochs: int,
              max_restarts: int = 0) -> ManagedProcess:
    """One torchrun agent on worker host h(2 + node); the rendezvous store on h2."""
    store = f"{bed.host(2).ip}:{RDZV_PORT}"
    args = ["--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", store, "--rdzv-id", bed.prefix,
            # The agent on h2 hosts the store: torchrun's own guess compares the endpoint
            # with the machine's hostname, which every namespace shares.
            "--rdzv-conf", f"is_host={node == 0},join_timeout=60,read_timeout=60",
            # The node's address (the rank-0 agent serves the ranks' store there): every
            # namespace shares the machine's hostname, which resolves to none of them.
            "--local-addr", bed.host(2 + node).ip,
            "--max-restarts",
            str(max_restarts), "--monitor-interval", "0.2", str(EXAMPLE),
            "--servers", servers, "--epochs", str(epochs)]
    return bed.spawn(bed.host(2 + node), f"torchrun-{node}", args,
                     program=[sys.executable, "-m", "torch.distributed.run"],
                     # buffered output: each rank's closing line reaches the log whole
                     env={"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "",
                          "LOGLEVEL": "INFO"})  # the agents say when they restart


def _reports(agents: list[ManagedProcess]) -> list[dict[str, Any]]:
    """Each rank's closing JSON line (the example prints one), from the agents' output."""
    lines = [line for agent in agents for line in agent.log_path.read_text().splitlines()
             if line.startswith("{\"rank\"")]
    return sorted((json.loads(line) for line in lines), key=lambda r: r["rank"])


def _finish(agents: list[ManagedProcess], timeout_s: float,
            exited: list[float] | None = None) -> list[dict[str, Any]]:
    """Each rank's report once every agent ended well; `exited` gets each agent's end
    (time.monotonic())."""
    for agent in agents:  # on a failure, both agents' tails: one's cause is often the other
        assert wait_exit(agent, timeout_s) == 0, "\n".join(a.log_tail(40) for a in agents)
        if exited is not None:
            exited.append(time.monotonic())
    return _reports(agents)


def _check_one_job(reports: list[dict[str, Any]]) -> None:
    """Every rank of WORLD reported once, named after its RANK, and on one final version."""
    assert [r["rank"] for r in reports] == list(range(WORLD)), reports
    assert [r["worker_id"] for r in reports] == [f"rank-{r}" for r in range(WORLD)]
    assert len({r["version"] for r in reports}) == 1, reports
    assert len({r["accuracy"] for r in reports}) == 1, reports  # one model


def test_two_node_torchrun_launch_trains_one_sync_job(netbed: BedFactory) -> None:
    bed = netbed(4, "1gbit")
    servers = _servers(bed, lease_s=10.0)  # no eviction of a rank slowed by torch's import
    agents = [_torchrun(bed, node, servers, epochs=2) for node in (0, 1)]
    reports = _finish(agents, 180)
    _check_one_job(reports)
    assert reports[0]["version"] == 2 * STEPS, reports  # the job's last version on every rank
    status = bed.status(bed.host(2), servers.split(",")[1])
    assert status is not None and status["version"] == 2 * STEPS and status["num_shards"] == 2
    # The servers saw the four ranks by the ids RANK gave them, each once (incarnation 1).
    log = (bed.run_dir / "server-h0.log").read_text()
    assert _incarnations(log) == {f"rank-{r}": [1] for r in range(WORLD)}


def test_a_killed_rank_is_restarted_by_torchrun_and_rejoins_the_job(
        netbed: BedFactory) -> None:
    """SIGKILL one rank mid-job: torchrun restarts its node's workers (and, after the new
    rendezvous, the other node's), stopping the old ones with SIGTERM, on which they leave
    the job (`workers.termination`); the killed rank's successor waits out its lease. Each
    restarted rank attaches as the next incarnation of its RANK's worker id, and the job
    ends with every rank on its last version holding one model, each having trained."""
    bed = netbed(4, "1gbit")
    # A lease longer than a restart takes here (about 15 s on the loaded 2-core machine),
    # so the killed rank's successor meets its predecessor's live session and waits it out.
    servers = _servers(bed, lease_s=30.0)
    epochs = JOB_EPOCHS
    agents = [_torchrun(bed, node, servers, epochs, max_restarts=1) for node in (0, 1)]
    observer = bed.host(2)
    victim = _kill_rank_3_mid_job(bed, agents, servers, epochs * STEPS)
    killed_at = time.monotonic()
    exited: list[float] = []
    reports = _finish(agents, 240, exited)
    _check_one_job(reports)
    assert reports[0]["version"] == epochs * STEPS, reports
    for address in servers.split(","):  # every shard on it: no rank a shard apart (#15)
        status = bed.status(observer, address)
        assert status is not None and status["version"] == epochs * STEPS, status
    log = (bed.run_dir / "server-h0.log").read_text()
    incarnations = _incarnations(log)
    # Every rank attached again as a later incarnation of its worker id: the killed one
    # and its node's other rank (torchrun restarts a node's whole group), and the other
    # node's two, restarted by the new rendezvous round. (A rank starved on this loaded
    # machine may also have been evicted and rejoined on its own: more incarnations.)
    assert sorted(incarnations) == [f"rank-{r}" for r in range(WORLD)], incarnations
    assert all(seen[0] == 1 and seen[-1] >= 2 for seen in incarnations.values()), incarnations
    assert "evicted worker 'rank-3'" in log  # the killed rank's lease ran out
    # The ranks torchrun stopped with SIGTERM left instead of holding their sessions (and
    # every step) for a lease: mid-job, or, had the others' restart come late, at its end
    # while waiting there for the world (`workers.job_end`).
    left = re.findall(r"worker '(rank-\d)' left at step (\d+)", log)
    assert {"rank-0", "rank-1", "rank-2"} <= {w for w, _ in left}, left
    # The killed rank's successor was refused while its predecessor's lease ran, and
    # waited (attach's claim wait under torchrun) instead of failing.
    assert re.search(r"Handshake refused \(FAILED_PRECONDITION\): worker id 'rank-3' is "
                     "already attached by a live process", log)
    restarts = [a.log_path.read_text().count("will restart worker group") for a in agents]
    assert sum(restarts) >= 2, restarts  # the failed node, then the other one
    assert not psutil.pid_exists(victim.pid)
    print(f"restart: the agents ended {exited[0] - killed_at:.1f}s and "
          f"{exited[1] - killed_at:.1f}s after the kill")


def test_ranks_done_first_wait_for_a_late_restart_on_the_other_node(
        netbed: BedFactory) -> None:
    """The other node's ranks finish the job before the failed node's agent restarts
    (here that agent is stopped meanwhile: a slow node). They wait at the job's end for
    the whole world (`workers.job_end`) instead of ending, so their agent is still in its
    monitor loop when the restart's rendezvous round opens and joins it; before, it sat in
    torchrun's exit barrier while the restarting agent waited for it in the rendezvous,
    and the launch failed. The new round's ranks attach at the job's last version, find
    nothing left to take and end, every rank on one model."""
    bed = netbed(4, "1gbit")
    lease_s = 8.0
    servers = _servers(bed, lease_s=lease_s)
    epochs = JOB_EPOCHS
    total = epochs * STEPS
    agents = [_torchrun(bed, node, servers, epochs, max_restarts=1) for node in (0, 1)]
    observer, first = bed.host(2), servers.split(",")[0]
    try:
        _kill_rank_3_mid_job(bed, agents, servers, total,
                             stop_agent=agents[1])  # node 1's agent: a slow node
        # The other three ranks wait out the killed rank's lease and finish the job.
        wait_for("the job's last version",
                 lambda: (s := bed.status(observer, first)) and s["version"] == total,
                 lease_s + 150)
        time.sleep(3.0)  # past their last step: the ranks of node 0 reached the job's end
        assert agents[0].process.poll() is None, agents[0].log_tail(40)
    finally:
        os.kill(agents[1].process.pid, signal.SIGCONT)
    reports = _finish(agents, 180)
    _check_one_job(reports)
    assert all(r["version"] == total and r["steps"] == 0 for r in reports), reports
    restarts = [a.log_path.read_text().count("will restart worker group") for a in agents]
    assert all(restarts), restarts  # node 1 for its failure, node 0 for the new round
    log = (bed.run_dir / "server-h0.log").read_text()
    assert all(seen[-1] >= 2 for seen in _incarnations(log).values()), log[-2000:]


def _kill_rank_3_mid_job(bed: NetBed, agents: list[ManagedProcess], servers: str, total: int,
                         stop_agent: ManagedProcess | None = None) -> psutil.Process:
    """Once training is under way, SIGKILL the process of rank 3 (first SIGSTOP
    `stop_agent`, when given); the job must not have ended by then (a quiet machine
    takes a 100-step job in about 3 s, and one status query a second)."""
    observer, first = bed.host(2), servers.split(",")[0]
    wait_for("training under way",
             lambda: (s := bed.status(observer, first)) and s["version"] >= 3, 120)
    victim = _rank_process(agents, rank=3)
    if stop_agent is not None:
        os.kill(stop_agent.process.pid, signal.SIGSTOP)
    os.kill(victim.pid, signal.SIGKILL)  # a grandchild of this test, found by its RANK
    status = bed.status(observer, first)
    assert status is not None and status["version"] < total, (
        f"the job had ended when rank 3 was killed ({status}): lengthen JOB_EPOCHS")
    return victim


def _rank_process(agents: list[ManagedProcess], rank: int) -> psutil.Process:
    """The worker process torchrun started with RANK=`rank` (a child of one of our
    agents)."""
    def find() -> psutil.Process | None:
        for agent in agents:
            for child in psutil.Process(agent.process.pid).children(recursive=True):
                try:
                    if child.environ().get("RANK") == str(rank):
                        return child
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        return None

    return wait_for(f"the process of rank {rank}", find, 30)


def _incarnations(server_log: str) -> dict[str, list[int]]:
    """worker id -> the incarnations its sessions opened with, in order (server log)."""
    seen: dict[str, list[int]] = {}
    for worker, incarnation in re.findall(r"opened by worker '([^']+)', incarnation (\d+)",
                                          server_log):
        seen.setdefault(worker, []).append(int(incarnation))
    return seen
