"""`python -m benchmarks.hosts --plan rpc --rate R`: the rpc comparison at any one rate,
the model a tenth of --mb at 100 Mbit/s as in `--plan full`."""

from __future__ import annotations

import pytest

from benchmarks.hosts import plan


@pytest.mark.parametrize(("rate", "mb"), [("10gbit", 20.0), ("1gbit", 20.0), ("100mbit", 2.0)])
def test_rpc_plan_runs_every_system_at_the_rate_asked(rate: str, mb: float) -> None:
    cases = plan("rpc", 20.0, rate)
    assert {(c.system, c.workers, c.server_hosts) for c in cases} == {
        (system, workers, hosts) for workers in (2, 4)
        for system, hosts in (("ours", 1), ("gloo", 0), ("rpc", 1))}
    assert {(c.rate, c.model_mb, c.codec) for c in cases} == {(rate, mb, "none")}
    assert plan("rpc", 20.0) == plan("rpc", 20.0, "1gbit")  # the default, as before
