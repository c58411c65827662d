"""Measurements the host tests take from inside a host of the bed."""

from __future__ import annotations

import sys

from testbed import NetBed
from testbed.bed import Host

# TCP connects to a closed port: each is answered by a reset, one round trip.
_ROUND_TRIPS = """
import socket, sys, time
for _ in range(int(sys.argv[2])):
    started = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], 9), timeout=5).close()
    except OSError:
        pass
    print(time.monotonic() - started)
"""


def round_trips(bed: NetBed, source: Host, address: str, count: int = 5) -> list[float]:
    """`count` round trips (s) from `source` to `address`; compare their minimum, as a
    loaded machine stalls some."""
    done = bed.run(source, [sys.executable, "-c", _ROUND_TRIPS, address, str(count)])
    assert done.returncode == 0, done.stdout + done.stderr
    return [float(line) for line in done.stdout.split()]
