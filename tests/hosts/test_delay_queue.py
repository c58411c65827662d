"""`testbed.delay_queue` adds a round trip where the kernel has no sch_netem (issue #14's
window measurement, now also the bed's link delay): every packet a host receives waits
DELAY ms in an NFQUEUE, so a TCP connect from another host (answered by a reset) takes at
least DELAY; stopped, it removes its iptables rule and the link is fast again. Skipped
without iptables."""

from __future__ import annotations

import pytest

from testbed.delay_queue import iptables
from tests.chaos import wait_exit
from tests.hosts.conftest import BedFactory
from tests.hosts.probes import round_trips

pytestmark = pytest.mark.timeout(60)
DELAY_MS = 30.0


def test_every_round_trip_to_the_host_takes_the_delay_until_it_stops(
        netbed: BedFactory) -> None:
    tool = iptables()
    if tool is None:
        pytest.skip("no iptables here (apt-get install iptables)")
    bed = netbed(2)
    target, client = bed.host(0), bed.host(1)

    assert min(round_trips(bed, client, target.ip, 4)) < DELAY_MS / 1e3 / 2  # (min: a loaded machine stalls some)
    delay = bed.start_delay_queue(target, DELAY_MS)
    assert "NFQUEUE" in bed.run(target, [tool, "-S"]).stdout
    assert min(round_trips(bed, client, target.ip, 4)) >= DELAY_MS / 1e3 * 0.95
    delay.process.terminate()
    assert wait_exit(delay, 10) == 0, delay.log_tail()
    assert "NFQUEUE" not in bed.run(target, [tool, "-S"]).stdout
    assert min(round_trips(bed, client, target.ip, 4)) < DELAY_MS / 1e3 / 2  # (min: a loaded machine stalls some)
