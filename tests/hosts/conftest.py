"""The namespace test bed as a fixture: skipped, with the reason, where namespaces cannot
be made (not root, no `ip`/`tc`, no veth)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed import LinkSpec, NetBed, unavailable

BedFactory = Callable[..., NetBed]


@pytest.fixture
def netbed() -> Iterator[BedFactory]:
    """make(hosts, rate='1gbit') -> an entered NetBed, closed (processes ended, namespaces
    deleted) after the test; the tests put a failed process's log tail in their asserts."""
    why = unavailable()
    if why is not None:
        pytest.skip(f"no network namespaces here: {why}")
    beds: list[NetBed] = []
    with tempfile.TemporaryDirectory(prefix="ps-hosts-") as tmp:

        def make(hosts: int, rate: str = "1gbit") -> NetBed:
            bed = NetBed(Path(tmp) / f"bed{len(beds)}", hosts, LinkSpec(rate))
            beds.append(bed)
            return bed.__enter__()

        try:
            yield make
        finally:
            for bed in beds:
                bed.close()
