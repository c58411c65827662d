"""The benchmarks' emulated link: a token bucket per direction, one link per server."""

from __future__ import annotations

import time

from benchmarks.shaping import TokenBucketLink, capped_links
from workers.connection import LinkShaper


def test_each_direction_is_capped_on_its_own() -> None:
    link = TokenBucketLink(1e6, burst_bytes=1000)  # 1 MB/s each way
    assert link.uplink is not link.downlink
    started = time.monotonic()
    for _ in range(5):
        link.send(20_000)  # 100 kB up: about 0.1 s at 1 MB/s
        link.receive(20_000)  # 100 kB down: another 0.1 s, one after the other here
    elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 1.0


def test_capped_links_gives_each_server_its_own_link() -> None:
    assert capped_links(None) is None
    factory = capped_links(12.5e6)
    assert factory is not None
    first, second = factory("a:1"), factory("b:2")
    assert first is not second
    shaper: LinkShaper = first  # satisfies the protocol the client takes
    shaper.send(10)
