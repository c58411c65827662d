"""`python -m benchmarks.hosts` in quick mode: the torch.distributed.rpc parameter server of
the suite across hosts (its PS on one namespace, two trainers on two others, TensorPipe on
each host's eth0), a 1 MB model, 2 timed steps. Skipped where namespaces cannot be made."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.hosts import Case, run_case
from testbed import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_rpc_parameter_server_across_hosts(tmp_path: Path) -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(f"no network namespaces here: {why}")
    row = run_case(Case("rpc", "1gbit", 2, 1, "none", 1.0), tmp_path, warmup=1, reps=2)
    assert len(row["steps"]) == 2 and 0 < row["step_s"] < 30, row
    # Every step moved each trainer's gradients (1 MB) to the server host and the parameters
    # (1 MB) back over the trainers' own links: 2 trainers x 2 MB, plus TCP/IP headers.
    assert 4.0e6 <= row["wire_bytes"] <= 4.6e6, row
