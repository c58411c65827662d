"""`paramserver federated` on digits: the accuracy bars of the issue, separate client
processes (`paramserver client`), dropouts, and a clear error when no client is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _federated(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    tmp_path.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "paramserver.cli.main", "federated", "--report", str(report),
         "--run-dir", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=280, cwd=REPO, stdin=subprocess.DEVNULL,
        check=False)
    return result, (json.loads(report.read_text()) if report.exists() else {})


@pytest.mark.parametrize(("partition", "bar"), [("dirichlet:0.5", 0.90), ("iid", 0.95)])
def test_fedavg_on_ten_clients_reaches_the_bar(tmp_path: Path, partition: str,
                                               bar: float) -> None:
    result, report = _federated(tmp_path, "--clients", "10", "--rounds", "30", "--fraction",
                                "1.0", "--local-epochs", "1", "--partition", partition,
                                "--strategy", "fedavg", "--simulate")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert report["rounds"] == 30 and len(report["round_accuracy"]) == 30
    assert report["round_accuracy"][-1] >= bar
    assert report["bytes_pushed"] > 0 and report["bytes_pulled"] > 0
    assert len(report["client_examples"]) == 10 and sum(report["client_examples"]) == 1347
    assert "round 30/30 accuracy" in result.stdout  # progress per round


def test_separate_client_processes_with_sampling_and_dropouts(tmp_path: Path) -> None:
    result, report = _federated(tmp_path, "--clients", "4", "--rounds", "6", "--fraction",
                                "0.5", "--partition", "quantity:1.0", "--strategy", "fedprox",
                                "--dropout", "0.3", "--round-timeout", "3",
                                "--codec", "qsgd:bits=8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert report["rounds"] == 6 and report["codec"].startswith("qsgd")
    assert report["dropouts"], "a 30% dropout over 12 sampled slots left no trace"
    assert all("@" in d for d in report["dropouts"])


def test_no_client_left_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    # Every client fails on its first report (an invalid weighting): nobody is left.
    result, _ = _federated(tmp_path, "--clients", "2", "--rounds", "3", "--weighting",
                           "capped:x")
    assert result.returncode == 1
    assert "no client is left" in result.stdout or "every client exited" in result.stdout


@pytest.mark.parametrize("remedy", [["--weighting", "capped:100"], ["--resample-to", "100"],
                                    ["--strategy", "fedprox", "--prox-mu", "0.1"]])
def test_imbalance_remedies_train_on_a_quantity_skewed_split(tmp_path: Path,
                                                             remedy: list[str]) -> None:
    result, report = _federated(tmp_path, "--clients", "10", "--rounds", "15", "--partition",
                                "quantity:0.3", "--simulate", *remedy)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sizes = report["client_examples"]
    assert max(sizes) > 5 * min(sizes)  # the split really is skewed
    assert report["round_accuracy"][-1] >= 0.90


def test_two_simulated_runs_with_one_seed_give_the_same_model(tmp_path: Path) -> None:
    """Issue #17: `federated --simulate` twice with one seed gives the bit-identical global
    model (final SHA-256) and the same accuracy every round. It did not: the registered
    model depended on which client threads built their models at once (a shared, seeded
    global generator), and each round summed the updates in arrival order."""
    runs = []
    for run in range(2):
        result, report = _federated(tmp_path / str(run), "--clients", "6", "--rounds", "3",
                                    "--partition", "dirichlet:0.5", "--seed", "3",
                                    "--simulate")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert report["dropouts"] == [] and report["skipped_rounds"] == []
        assert "final model sha256" in result.stdout
        runs.append(report)
    first, second = runs
    assert len(first["model_sha256"]) == 64
    assert first["model_sha256"] == second["model_sha256"]
    # A round the observer missed shows a later round's accuracy (reported, not hidden).
    missed = set(first["unobserved_rounds"]) | set(second["unobserved_rounds"])
    assert [a for r, a in enumerate(first["round_accuracy"], 1) if r not in missed] == \
        [a for r, a in enumerate(second["round_accuracy"], 1) if r not in missed]
    assert first["round_accuracy"][-1] == second["round_accuracy"][-1]


@pytest.mark.parametrize("lazy", [False, True])
def test_a_logistic_regression_federation(tmp_path: Path, lazy: bool) -> None:
    """`--model logreg`: the clients, the lazy population and the observer train and score
    the 650-parameter model (a push carries ~2.6 kB of float32, the MLP's ~38 kB)."""
    result, report = _federated(tmp_path, "--clients", "3", "--rounds", "3", "--simulate",
                                "--model", "logreg", "--client-lr", "0.5", "--local-epochs",
                                "2", *(["--lazy"] if lazy else []))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert report["model"] == "logreg" and report["rounds"] == 3
    assert report["round_accuracy"][-1] > 0.8  # it learns: chance is 0.1
    assert 9 * 650 * 4 < report["bytes_pushed"] < 9 * 9610 * 4 / 4
