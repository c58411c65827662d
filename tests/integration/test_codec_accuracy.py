"""Issue #4's accuracy bars on the digits job (2 workers, sync, 10 epochs), end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from paramserver.cli.local_cluster import CLI

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _launch(tmp_path: Path, name: str, *extra: str) -> dict:  # type: ignore[type-arg]
    report = tmp_path / f"{name}.json"
    result = subprocess.run(
        [*CLI, "launch", "--servers", "1", "--workers", "2", "--mode", "sync", "--epochs", "10",
         "--no-progress", "--report", str(report), "--run-dir", str(tmp_path / name), *extra],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    return _launch(tmp_path_factory.mktemp("none"), "none", "--codec", "none")


def test_topk_with_error_feedback_is_within_a_point_at_3_percent_of_the_bytes(
        baseline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Error feedback with momentum correction: momentum moves from the server to the workers.
    topk = _launch(tmp_path, "topk", "--codec", "topk:ratio=0.01", "--ef-momentum", "0.9",
                   "--momentum", "0")
    assert topk["codec"] == "topk:mode=approx,ratio=0.01"
    assert topk["accuracy"] >= baseline["accuracy"] - 0.01, (topk, baseline)
    assert topk["bytes_pushed"] <= 0.03 * baseline["bytes_pushed"]
    assert topk["compression_ratio"] > 30


def test_topk_with_default_flags_is_within_a_point(baseline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Issue #14: with the server's default SGD momentum, the server hands its momentum to
    # the top-k workers (momentum correction) and applies their pushes with plain SGD.
    topk = _launch(tmp_path, "topk-default", "--codec", "topk:ratio=0.01")
    assert topk["accuracy"] >= baseline["accuracy"] - 0.01, (topk, baseline)
    assert topk["bytes_pushed"] <= 0.03 * baseline["bytes_pushed"]


@pytest.mark.parametrize("bits, points", [(8, 0.005), (4, 0.01)])
def test_qsgd_stays_close_to_uncompressed(baseline, tmp_path: Path, bits: int,  # type: ignore[no-untyped-def]
                                          points: float) -> None:
    quantised = _launch(tmp_path, f"qsgd{bits}", "--codec", f"qsgd:bits={bits}")
    assert quantised["accuracy"] >= baseline["accuracy"] - points, (quantised, baseline)
    assert quantised["compression_ratio"] > 32 / bits * 0.9


def test_launch_refuses_momentum_applied_twice(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "launch", "--codec", "topk:ratio=0.01", "--ef-momentum", "0.9"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "--momentum 0" in result.stdout
