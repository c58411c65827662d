"""The bed leaves nothing behind: not after an exception inside it, and not after its
owner was SIGKILLed halfway (then `cleanup_leftovers` finds the dead run's namespaces by
name and ends the processes inside them by pid; `python -m testbed --cleanup` also ends
its delay processes by the marker in their argv, even once their namespaces are gone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from testbed import NetBed, cleanup_leftovers, delay_backend, unavailable
from testbed import TestbedUnavailable as Unavailable  # (not collected as a test class)
from testbed.delay_queue import marked
from testbed.netns import ip, namespaces

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]
SLEEPER = ("sleep", "600")

# A harness run that builds 2 hosts, starts a process in each, says so and waits to die.
HALF_RUN = """
import json, sys, time
from pathlib import Path
from testbed import NetBed
with NetBed(Path(sys.argv[1]), hosts=2) as bed:
    pids = [bed.spawn(bed.host(i), f"sleeper-{i}", [], program=("sleep", "600")).process.pid
            for i in range(2)]
    print(json.dumps({"prefix": bed.prefix, "pids": pids}), flush=True)
    time.sleep(600)
"""

# The same with link delay, where the bed does it with its delay queues.
DELAYED_RUN = """
import json, sys, time
from pathlib import Path
from testbed import LinkSpec, NetBed
with NetBed(Path(sys.argv[1]), hosts=2, link=LinkSpec(delay_ms=5)) as bed:
    pids = [managed.process.pid for managed in bed.cluster.processes]
    print(json.dumps({"prefix": bed.prefix, "pids": pids}), flush=True)
    time.sleep(600)
"""


def _half_run(script: str, tmp: str) -> tuple[str, list[int]]:
    """Run `script` until it prints its prefix and pids, then SIGKILL it."""
    run = subprocess.Popen([sys.executable, "-c", script, tmp], stdout=subprocess.PIPE,
                           text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert run.stdout is not None
        started = json.loads(run.stdout.readline())
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
    return started["prefix"], started["pids"]


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _links_named(prefix: str) -> list[str]:
    """Links in the root namespace whose name carries `prefix` (the bed makes none there)."""
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    return [line for line in shown.splitlines() if prefix in line]


@pytest.fixture(autouse=True)
def _namespaces_possible() -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(f"no network namespaces here: {why}")


def test_a_run_killed_halfway_is_cleaned_up_by_name() -> None:
    with tempfile.TemporaryDirectory(prefix="ps-bed-") as tmp:
        prefix, pids = _half_run(HALF_RUN, tmp)
        left = [ns for ns in namespaces() if ns.startswith(prefix + "-")]
        assert len(left) == 3  # the switch and two hosts outlived their owner
        assert all(_alive(pid) for pid in pids)  # and so did the processes inside them

        removed = cleanup_leftovers()

        assert sorted(removed) >= sorted(left)
        assert not [ns for ns in namespaces() if ns.startswith(prefix + "-")]
        assert not any(_alive(pid) for pid in pids)
        assert not _links_named(prefix)


def test_an_exception_inside_the_bed_leaves_nothing() -> None:
    with tempfile.TemporaryDirectory(prefix="ps-bed-") as tmp:
        bed = NetBed(Path(tmp), hosts=2)
        with pytest.raises(RuntimeError, match="boom"), bed:
            pid = bed.spawn(bed.host(1), "sleeper", [], program=SLEEPER).process.pid
            assert bed.run(bed.host(0), ["ip", "-o", "addr", "show", "eth0"]).stdout.count(
                "10.77.0.1/24") == 1
            raise RuntimeError("boom")
        assert not [ns for ns in namespaces() if ns.startswith(bed.prefix + "-")]
        assert not _alive(pid)


def test_cleanup_spares_a_live_run() -> None:
    with tempfile.TemporaryDirectory(prefix="ps-bed-") as tmp, NetBed(Path(tmp), 1) as bed:
        removed = cleanup_leftovers()  # may remove a dead run's, never ours: we are alive
        assert not [ns for ns in removed if ns.startswith(bed.prefix + "-")]
        assert len([ns for ns in namespaces() if ns.startswith(bed.prefix + "-")]) == 2


def test_cleanup_ends_a_dead_runs_delay_processes_by_their_marker() -> None:
    try:
        backend = delay_backend()
    except Unavailable as error:
        pytest.skip(f"no delay here: {error}")
    if backend != "queue":
        pytest.skip("netem delays here; the bed starts no delay processes")
    with tempfile.TemporaryDirectory(prefix="ps-bed-") as tmp:
        prefix, pids = _half_run(DELAYED_RUN, tmp)
        assert sorted(pid for pid, ns in marked().items() if ns.startswith(prefix)) == pids
        for ns in namespaces():  # gone, but not their processes: no name leads to them
            if ns.startswith(prefix + "-"):
                ip("netns", "del", ns)
        assert all(_alive(pid) for pid in pids)

        done = subprocess.run([sys.executable, "-m", "testbed", "--cleanup"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

        assert all(f"ended delay process {pid}" in done.stdout for pid in pids), done.stdout
        assert not any(_alive(pid) for pid in pids)
