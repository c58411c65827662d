"""The benchmark scripts keep working: each runs in --quick mode and reports every figure.

No timing is asserted here (a noisy 2-core machine would make that flaky); the figures
themselves are recorded in benchmarks/RESULTS.md from full runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _run(script: str, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick",
                             "--report", str(report)], capture_output=True, text=True,
                            timeout=240, cwd=REPO, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report.read_text())


def test_throughput_quick(tmp_path: Path) -> None:
    report = _run("throughput.py", tmp_path)
    names = {(r["name"], r["workers"]) for r in report["results"]}
    assert {("ceiling", 1), ("ours", 1), ("ours", 2)} <= names
    assert all(r["gbps_min"] > 0 and r["gbps_min"] <= r["gbps_median"] <= r["gbps_max"]
               for r in report["results"])
    assert set(report["ratio_ours_over_ceiling"]) == {"1", "2"}


def test_shards_quick(tmp_path: Path) -> None:
    report = _run("shards.py", tmp_path)
    assert [r["shards"] for r in report["rows"]] == [1, 2, 4]
    assert all(len(r["shard_bytes"]) == r["shards"] for r in report["rows"])


def test_codecs_quick(tmp_path: Path) -> None:
    report = _run("codecs.py", tmp_path)
    assert {row["codec"] for row in report["codec_speed"]} >= {"none", "qsgd:bits=8,bucket=512"}
    assert report["step_caps"] and "fp16" in report["break_even"]


def test_overlap_quick(tmp_path: Path) -> None:
    report = _run("overlap.py", tmp_path)
    assert report["parts_pushed"] > 0  # buckets really left during backward
    timings = report["timings"]
    assert timings["step_overlap"]["median"] > 0 and timings["step_plain"]["median"] > 0
    assert report["hideable_s"] == pytest.approx(min(timings["backward"]["median"],
                                                     timings["push"]["median"]))
