"""Link delay and loss need the kernel's netem qdisc (sch_netem). Where the kernel has it,
a bed with `delay_ms` adds that delay each way (ping's round trip shows twice it); where it
does not (the CI machine's kernel, 2026-12-03: CONFIG_NET_SCH_NETEM is not set), asking
for delay or loss fails at once with a message naming the module, and leaves nothing
behind. Skipped where namespaces cannot be made."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from testbed import LinkSpec, NetBed, unavailable
from testbed import TestbedUnavailable as Unavailable  # (not collected as a test class)
from testbed.netns import namespaces, netem_unavailable

pytestmark = pytest.mark.timeout(60)
# Round trips to host 1: a TCP connect to a closed port is answered by a reset.
RTT = """
import socket, sys, time
for _ in range(5):
    started = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], 9), timeout=5).close()
    except OSError:
        pass
    print(time.monotonic() - started)
"""


@pytest.mark.parametrize("link", [LinkSpec("1gbit", delay_ms=20), LinkSpec("1gbit", loss_pct=1)],
                         ids=["delay", "loss"])
def test_delay_and_loss_work_or_fail_naming_sch_netem(link: LinkSpec) -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(f"no network namespaces here: {why}")
    before = set(namespaces())
    with tempfile.TemporaryDirectory(prefix="ps-netem-") as tmp:
        if netem_unavailable() is not None:
            with pytest.raises(Unavailable, match=r"sch_netem \(CONFIG_NET_SCH_NETEM\)"):
                NetBed(Path(tmp), 2, link).__enter__()
            assert set(namespaces()) <= before  # refused before anything was made
            return
        with NetBed(Path(tmp), 2, link) as bed:
            done = bed.run(bed.host(0), [sys.executable, "-c", RTT, bed.host(1).ip])
    if not link.delay_ms:
        return  # 1% loss: the bed was built with it
    assert done.returncode == 0, done.stdout + done.stderr
    rtts = [float(s) for s in done.stdout.split()]
    # delay on each host's eth0 and on its switch port: 2 x 20 ms each way
    assert min(rtts) >= 4 * link.delay_ms / 1e3 * 0.9, rtts
