"""Ranks that (re)join a sharded sync job mid-step: what the torchrun restart test (issue #15)
met on the namespaces, on 127.0.0.1 without torchrun.

The shards of a sync job each close a step on their own, once their own live members pushed
it, so for a moment one shard can be a version ahead of another (a member left, or was
evicted, on one shard first; a process died between its pushes to two shards). A worker
that attaches, or rejoins, in that moment pulls the two shards at two versions, and from
then on pushes "step v+1" to one and "step v" to the other. Before the fix its last step
pushed the job's last step to the shard ahead after the other ranks had left, closing it
alone: every rank reported the job's last version, that one holding another model. Now no
push goes beyond the job's end (`job_steps`), and every shard stops there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import workers
from paramserver.polling import wait_for
from paramserver.server.app import RunningServer
from workers.attach import AttachedModel

TOTAL = 6  # the job's steps
REPO = Path(__file__).resolve().parents[2]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))


def _train(ps: AttachedModel, seed: int, ended: dict[str, object]) -> Callable[[], None]:
    """The embedded loop of examples/embed_existing_loop.py: the job's steps in sync, then
    close (leave); `ended[seed]` is the version it ended on, or the error it met."""
    def run() -> None:
        try:
            for step in ps.job_steps(TOTAL):
                gen = torch.Generator().manual_seed(seed * 1000 + step)
                x, y = torch.randn(4, 8, generator=gen), torch.randint(0, 2, (4,), generator=gen)
                ps.model.zero_grad()
                nn.functional.cross_entropy(ps.model(x), y).backward()
                ps.step()
            ended[str(seed)] = (ps.version, list(ps.client.versions))
        except Exception as error:  # noqa: BLE001 - reported by the test thread
            ended[str(seed)] = error
        finally:
            ps.close()

    return run


def test_a_worker_attaching_between_two_shards_steps_ends_on_the_jobs_model(
        server_factory: Callable[..., RunningServer]) -> None:
    servers = [server_factory(expected_workers=2, lease_s=0) for _ in range(2)]
    addresses = [s.address for s in servers]
    a = workers.attach(_model(), addresses, worker_id="a", timeout_s=20, retry_s=20)
    b = workers.attach(_model(), addresses, worker_id="b", timeout_s=20, retry_s=20)
    assert b.client.plan is not None and all(b.client.plan.shard_layout(i).tensors
                                             for i in range(2))  # both shards hold some
    ended: dict[str, object] = {}
    # b's process dies after leaving shard 1 only: shard 1 closes a's step 0 at once,
    # shard 0 waits for the members it has left.
    b.client.connections[1].leave()
    first = threading.Thread(target=_train(a, 1, ended))
    first.start()
    wait_for("shard 1 a step ahead of shard 0",
             lambda: servers[1].core.store.version == 1 and servers[0].core.store.version == 0,
             20)
    c = workers.attach(_model(), addresses, worker_id="c", timeout_s=20, retry_s=20)
    assert c.client.versions == [0, 1]  # attached between the shards' steps
    b.client.connections[0].leave()  # now shard 0 waits for c
    second = threading.Thread(target=_train(c, 2, ended))
    second.start()
    for thread in (first, second):
        thread.join(60)
        assert not thread.is_alive()
    b.close()
    # Both ranks report the job's last version (as before the fix)...
    assert ended["1"] == (TOTAL, [TOTAL, TOTAL]), ended
    assert isinstance(ended["2"], tuple) and ended["2"][0] == TOTAL, ended
    # ... and now hold it: every shard there, one model.
    assert ended["2"] == (TOTAL, [TOTAL, TOTAL]), ended
    assert [s.core.store.version for s in servers] == [TOTAL, TOTAL]
    for (name, mine), (_, theirs) in zip(a.model.named_parameters(),
                                         c.model.named_parameters()):
        assert torch.equal(mine, theirs), name
    assert c.steps == TOTAL  # every step of shard 0's, from 0



RANK_SCRIPT = """
import sys, torch, workers
ps = workers.attach(torch.nn.Linear(4, 2), sys.argv[1], worker_id="rank-0")
print("attached", flush=True)
ps.client.pull(min_version=99, timeout_s=120)  # waits for a step that never comes
"""


@pytest.mark.parametrize("under_torchrun", [True, False])
def test_a_rank_torchrun_stops_leaves_the_job(
        server_factory: Callable[..., RunningServer], tmp_path: Path,
        under_torchrun: bool) -> None:
    """torchrun stops the ranks of a group it restarts with SIGTERM: such a rank leaves at
    once instead of holding its session (and every step) until its lease runs out.
    Outside torchrun SIGTERM keeps Python's default (the process just ends)."""
    server = server_factory(expected_workers=2, lease_s=60)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCHELASTIC_RUN_ID", None)
    if under_torchrun:
        env["TORCHELASTIC_RUN_ID"] = "test"
    log_path = tmp_path / "rank.log"
    with log_path.open("w") as log_file:
        rank = subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, server.address],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for("the rank attached", lambda: "attached" in log_path.read_text(), 60)
        assert server.core.members.live_workers() == {"rank-0"}
        rank.send_signal(signal.SIGTERM)
        assert rank.wait(30) == -signal.SIGTERM, log_path.read_text()
        # Left (not evicted: the lease is a minute), or still held when not under torchrun.
        assert server.core.members.live_workers() == (set() if under_torchrun
                                                      else {"rank-0"})
    finally:
        if rank.poll() is None:
            rank.kill()
            rank.wait(10)
