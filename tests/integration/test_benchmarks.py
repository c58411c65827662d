"""The benchmark scripts keep working: each runs in --quick mode and reports every figure.

They run from the checkout as `python -m benchmarks.<name>` (the package does not install
them), and `paramserver bench` finds the suite there. No timing is asserted here (a noisy
2-core machine would make that flaky); the figures themselves are recorded in
benchmarks/RESULTS.md from full runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from paramserver.cli import bench
from paramserver.cli.main import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _run(module: str, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", module, "--quick", "--report", str(report)],
                            check=False, capture_output=True, text=True, timeout=240, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report.read_text())


def test_throughput_quick(tmp_path: Path) -> None:
    report = _run("benchmarks.throughput", tmp_path)
    names = {(r["name"], r["workers"]) for r in report["results"]}
    assert {("ceiling", 1), ("ours", 1), ("ours", 2)} <= names
    assert all(r["gbps_min"] > 0 and r["gbps_min"] <= r["gbps_median"] <= r["gbps_max"]
               for r in report["results"])
    assert set(report["ratio_ours_over_ceiling"]) == {"1", "2"}


def test_shards_quick(tmp_path: Path) -> None:
    report = _run("benchmarks.shards", tmp_path)
    assert [r["shards"] for r in report["rows"]] == [1, 2, 4]
    assert all(len(r["shard_bytes"]) == r["shards"] for r in report["rows"])


def test_table_scale_quick(tmp_path: Path) -> None:
    report = _run("benchmarks.table_scale", tmp_path)
    sparse_small, sparse_large, dense = report["rows"]
    assert (sparse_small["rows"], sparse_large["rows"]) == (100_000, 100_000_000)
    assert sparse_large["sparse"] and not dense["sparse"]
    assert sum(sparse_large["stored_rows"]) < 100_000  # touched rows, not declared ones
    assert dense["bytes_per_step"] > 10 * sparse_small["bytes_per_step"]


def test_codecs_quick(tmp_path: Path) -> None:
    report = _run("benchmarks.codecs", tmp_path)
    assert {row["codec"] for row in report["codec_speed"]} >= {"none", "qsgd:bits=8,bucket=512"}
    assert report["step_caps"] and "fp16" in report["break_even"]


def test_overlap_quick(tmp_path: Path) -> None:
    report = _run("benchmarks.overlap", tmp_path)
    assert report["parts_pushed"] > 0  # buckets really left during backward
    timings = report["timings"]
    assert timings["step_overlap"]["median"] > 0 and timings["step_plain"]["median"] > 0
    assert report["hideable_s"] == pytest.approx(min(timings["backward"]["median"],
                                                     timings["push"]["median"]))


def _timings(node: object) -> list[dict]:  # type: ignore[type-arg]
    """Every {median, min, max} figure anywhere in a report."""
    if isinstance(node, dict):
        found = [node] if {"median", "min", "max"} <= node.keys() else []
        return found + [t for value in node.values() for t in _timings(value)]
    if isinstance(node, list):
        return [t for value in node for t in _timings(value)]
    return []


def test_bench_quick(tmp_path: Path) -> None:
    """`paramserver bench --quick`: every section reports, every figure is positive."""
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "paramserver.cli.main", "bench", "--quick", "--report",
         str(report_path)], check=False, capture_output=True, text=True, timeout=240, cwd=REPO,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    machine = report["machine"]
    assert machine["grpcio"] and machine["protobuf"] and machine["transport"]
    assert machine["cpu_count"] >= 1 and machine["chunk_bytes"] > 0
    assert {r["system"] for r in report["floor"]} == {"tcp", "grpc-stream"}
    assert {r["codec"] for r in report["ours"]["sync"]} >= {"none", "topk:ratio=0.01"}
    assert report["ours"]["async"] and report["soak"]["pushes"] > 0
    assert {r["system"] for r in report["peers"]} == {"gloo-allreduce", "rpc-ps"}
    assert {r["cap"] for r in report["caps"]["rows"]} == set(report["caps"]["caps"])
    assert {r["mode"] for r in report["convergence"]["rows"]} >= {"sync", "async"}
    assert report["targets"] and all("met" in t for t in report["targets"])
    figures = _timings(report)
    assert len(figures) >= 10
    for figure in figures:
        assert 0 < figure["min"] <= figure["median"] <= figure["max"], figure
    for row in report["floor"]:
        assert row["gbps"] > 0 and row["bytes_per_round"] > 0
    for row in report["ours"]["sync"]:
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        assert all(x > 0 for x in row["memory"]["peak_over_idle_x_model"])
    if report.get("plot"):
        assert Path(report["plot"]).stat().st_size > 0


def test_bench_finds_the_suite_in_this_checkout() -> None:
    assert bench.find_checkout() == REPO


def test_bench_outside_a_checkout_says_how_to_get_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """An installed package (no benchmarks/ next to it): a clear message, no traceback."""
    package = tmp_path / "site-packages" / "paramserver"
    package.mkdir(parents=True)
    assert bench.find_checkout(package) is None
    monkeypatch.setattr(bench, "PACKAGE_DIR", package)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "runs from a source checkout" in err and "make bench" in err


def test_tables_quick(tmp_path: Path) -> None:
    report = _run("benchmarks.tables", tmp_path)
    rows = {r["config"]: r for r in report["rows"]}
    assert {"ps-dense", "gloo", "ps-sparse"} <= rows.keys() and not report["not_measured"]
    # The same batches: the dense alternatives move whole tables, the sparse path its rows.
    assert rows["ps-dense"]["bytes_per_step"] > 10 * rows["ps-sparse"]["bytes_per_step"]
    assert rows["ps-sparse"]["bytes_per_step"] >= report["floor_bytes_per_step"]
