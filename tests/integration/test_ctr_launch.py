"""`paramserver launch --model ctr`: the CTR model through the built-in trainer (issue #16)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from paramserver.cli.local_cluster import CLI
from workers.ctr_data import SPECS
from workers.ctr_model import ctr_model
from workers.tasks import CTR_DIM, CTR_HIDDEN, SPARSE_TABLES


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_launch_trains_the_ctr_model_and_reports_its_auc(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*CLI, "launch", "--model", "ctr", "--ctr-spec", "tiny", "--workers", "2",
         "--mode", "sync", "--optimizer", "adam", "--lr", "0.002", "--batch-size", "256",
         "--epochs", "1", "--report", str(report), "--run-dir", str(tmp_path / "run"),
         "--no-progress"], check=False, capture_output=True, text=True, timeout=200,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(report.read_text())
    assert summary["metric"] == "auc" and "auc " in result.stdout
    assert summary["accuracy"] > 0.6, summary  # AUC: the generating model is learnt
    assert summary["steps"] == -(-SPECS["tiny"].train_examples // 2 // 256)
    spec = SPECS["tiny"]
    model = ctr_model(spec.table_rows, CTR_DIM, spec.dense_features, CTR_HIDDEN)
    dense = [p for n, p in model.named_parameters()
             if not (SPARSE_TABLES and n.startswith("tables."))]  # tables: rows, not tensors
    assert summary["shard_bytes"] == [4 * sum(p.numel() for p in dense)]
