"""Link delay and loss. `LinkSpec.delay_ms` holds for each direction of every host's link,
so a round trip between two hosts crosses four link directions and takes 4 x delay_ms;
`loss_pct` drops on each, so a packet between two hosts is lost with probability
1 - (1 - loss_pct/100)^2. Where the kernel has netem (sch_netem) the bed shapes with it;
where it does not (the CI machine's kernel, 2026-12-03: CONFIG_NET_SCH_NETEM is not set)
but iptables with NFQUEUE works, the bed's delay queue (a process per host) gives the same
figures; where neither works, asking for delay or loss fails at once with a message naming
both, and leaves nothing behind. Skipped where namespaces cannot be made."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import LinkSpec, NetBed, delay_backend, unavailable
from testbed import TestbedUnavailable as Unavailable  # (not collected as a test class)
from testbed.delay_queue import marked
from testbed.netns import namespaces
from tests.chaos import wait_exit
from tests.hosts.probes import round_trips

pytestmark = pytest.mark.timeout(60)
DELAY_MS = 10.0
REFUSAL = r"sch_netem \(CONFIG_NET_SCH_NETEM\), or else iptables with NFQUEUE"
DATAGRAMS = 200
# Count the datagrams that arrive until none came for 1 s (10 s at most).
RECEIVE = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 9000))
sock.settimeout(10)
print("ready", flush=True)
count = 0
try:
    while True:
        sock.recv(64)
        count += 1
        sock.settimeout(1)
except socket.timeout:
    pass
print("received", count, flush=True)
"""
SEND = f"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({DATAGRAMS}):
    sock.sendto(b"%d" % i, (sys.argv[1], 9000))
    time.sleep(0.001)
"""


@pytest.fixture
def run_dir() -> Iterator[Path]:
    why = unavailable()
    if why is not None:
        pytest.skip(f"no network namespaces here: {why}")
    with tempfile.TemporaryDirectory(prefix="ps-delay-") as tmp:
        yield Path(tmp)


def _refused(run_dir: Path, link: LinkSpec) -> bool:
    """Where neither netem nor NFQUEUE works: check that the bed refuses naming both and
    before making anything, and say so (True)."""
    try:
        delay_backend()
    except Unavailable:
        before = set(namespaces())
        with pytest.raises(Unavailable, match=REFUSAL):
            NetBed(run_dir, 2, link).__enter__()
        assert set(namespaces()) <= before  # refused before anything was made
        return True
    return False


def _left_behind(bed: NetBed, pids: list[int]) -> list[str]:
    gone = [ns for ns in namespaces() if ns.startswith(bed.prefix + "-")]
    alive = [f"pid {pid}" for pid in pids if Path(f"/proc/{pid}").exists()]
    strays = [f"delay {pid}" for pid, ns in marked().items() if ns.startswith(bed.prefix)]
    return gone + alive + strays


def test_a_round_trip_takes_four_times_the_delay_and_nothing_is_left(run_dir: Path) -> None:
    link = LinkSpec("1gbit", delay_ms=DELAY_MS)
    if _refused(run_dir, link):
        return
    with NetBed(run_dir, 2, link) as bed:
        assert bed.cluster is not None
        rtts = round_trips(bed, bed.host(0), bed.host(1).ip)
        pids = [managed.process.pid for managed in bed.cluster.processes]
        if bed.delay_by == "queue":
            assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    print(f"{bed.delay_by}: round trips {[round(rtt * 1e3, 1) for rtt in rtts]} ms")
    # 4 link directions of DELAY_MS each; the fastest of 5 (a loaded machine stalls some)
    assert 4 * DELAY_MS / 1e3 * 0.95 <= min(rtts) < 6 * DELAY_MS / 1e3, (bed.delay_by, rtts)
    assert not _left_behind(bed, pids)


def test_loss_drops_datagrams_between_hosts_at_the_rate_of_two_links(run_dir: Path) -> None:
    link = LinkSpec("unlimited", loss_pct=10, seed=1)  # 1 - 0.9^2 = 19% between two hosts
    if _refused(run_dir, link):
        return
    with NetBed(run_dir, 2, link) as bed:
        receiver = bed.spawn(bed.host(0), "receiver", [bed.host(0).ip],
                             program=[sys.executable, "-c", RECEIVE])
        deadline = time.monotonic() + 20
        while "ready" not in receiver.log_tail():
            assert receiver.process.poll() is None, receiver.log_tail()
            assert time.monotonic() < deadline, receiver.log_tail()
            time.sleep(0.02)
        sent = bed.run(bed.host(1), [sys.executable, "-c", SEND, bed.host(0).ip])
        assert sent.returncode == 0, sent.stderr
        assert wait_exit(receiver, 20) == 0, receiver.log_tail()
    received = int(receiver.log_tail().split("received")[-1])
    lost = 1 - received / DATAGRAMS
    print(f"{bed.delay_by}: {received} of {DATAGRAMS} datagrams arrived")
    assert 0.08 <= lost <= 0.32, (bed.delay_by, received)  # 19% +- 4 sigma


def test_without_iptables_the_refusal_names_both_ways(run_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI machine's case where this one has iptables: a PATH with `ip` and `tc` only."""
    tools = run_dir / "bin"
    tools.mkdir()
    for tool in ("ip", "tc"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, tools / tool)
    monkeypatch.setenv("PATH", str(tools))
    try:
        backend = delay_backend()
    except Unavailable as error:
        assert "NFQUEUE: no iptables" in str(error)
    else:
        assert backend == "netem"  # (netem needs no iptables)
        return
    assert _refused(run_dir, LinkSpec("1gbit", loss_pct=1))
