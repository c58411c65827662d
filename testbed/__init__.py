"""The multi-host test bed: N hosts as network namespaces on one machine, with their own
addresses and tc-capped links (tests and benchmarks share it; see bed.py)."""

from testbed.bed import SERVER_PORT, Host, LinkSpec, NetBed
from testbed.netns import (
    TestbedUnavailable,
    cleanup_leftovers,
    delay_backend,
    netem_available,
    unavailable,
)

__all__ = ["SERVER_PORT", "Host", "LinkSpec", "NetBed", "TestbedUnavailable",
           "cleanup_leftovers", "delay_backend", "netem_available", "unavailable"]
