"""The test bed's pure parts (no root needed): the tc arguments of a link shape and the
names that let a clean-up tell a dead run's namespaces from a live one's."""

from __future__ import annotations

import os

from testbed import LinkSpec, delay_queue
from testbed.netns import NAME, LinkShape, new_prefix


def test_a_rate_alone_is_a_token_bucket_with_a_burst_of_at_least_256_kib() -> None:
    args = LinkSpec("1gbit").shape().qdisc()
    assert args is not None and args[:3] == ("tbf", "rate", "1000000000bit")
    assert int(args[args.index("burst") + 1]) == 256 << 10  # 1 ms of 1 Gbit/s is less
    assert int(args[args.index("limit") + 1]) == 25_000_000  # 0.2 s of the rate


def test_unlimited_has_no_shaper_and_delay_or_loss_need_netem() -> None:
    assert LinkSpec("unlimited").shape().qdisc() is None
    args = LinkShape(rate_bit=100_000_000, delay_ms=5, loss_pct=1).qdisc()
    assert args == ("netem", "delay", "5ms", "loss", "1%", "limit", "100000", "rate",
                    "100000000bit")


def test_names_carry_the_owner_pid() -> None:
    prefix = new_prefix()
    match = NAME.match(f"{prefix}-h3")
    assert match is not None and int(match["pid"]) == os.getpid()
    assert NAME.match("pstb-h0") is None and NAME.match("other-h0") is None


def test_where_the_delay_queue_delays_tc_keeps_the_rate_alone() -> None:
    link = LinkShape(rate_bit=100_000_000, delay_ms=5, loss_pct=1)
    assert link.rate_only() == LinkShape(rate_bit=100_000_000)
    assert link.rate_only().qdisc() == LinkShape(rate_bit=100_000_000).qdisc()


def test_the_delay_queue_argv_carries_the_bed_marker() -> None:
    argv = [*delay_queue.PROGRAM, *delay_queue.arguments("pstb1x0abc-h0", 2, 20, 19, 7)]
    assert argv[argv.index(delay_queue.MARKER) + 1] == "pstb1x0abc-h0"
    assert argv[argv.index("--delay-ms") + 1] == "20" and "-I" in argv
