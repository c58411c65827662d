"""Federated strategies on skewed digits clients (issue #8): which helps when.

Runs `paramserver federated --simulate` (10 clients, 30 rounds, 1 local epoch) for each
strategy / weighting / resampling on a quantity-skewed and a label-skewed split, and prints
the final test accuracy and the mean over the last 5 rounds (less noisy).

    python -m benchmarks.federated [--quick] [--report FILE]

Round cost, start-up, Flower's engine and population memory: `benchmarks.federated_cost`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness

CONFIGS = [
    ("fedavg", []),
    ("fedprox mu=0.1", ["--strategy", "fedprox", "--prox-mu", "0.1"]),
    ("uniform weights", ["--weighting", "uniform"]),
    ("capped weights (100)", ["--weighting", "capped:100"]),
    ("resample small clients to 100", ["--resample-to", "100"]),
    ("fedavgm", ["--strategy", "fedavgm", "--client-lr", "0.05"]),
    ("fedadam", ["--strategy", "fedadam"]),
]
PARTITIONS = ["quantity:0.3", "dirichlet:0.1"]


def run(partition: str, extra: list[str], rounds: int, seed: int) -> dict:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory(prefix="ps-fed-bench-") as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([*harness.CLI, "federated", "--clients", "10", "--rounds", str(rounds),
                        "--partition", partition, "--simulate", "--seed", str(seed),
                        "--report", str(report), *extra],
                       check=True, capture_output=True, text=True, cwd=harness.REPO, timeout=600)
        return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds, 2 configurations")
    parser.add_argument("--seeds", type=int, default=2, help="partition seeds per cell (2)")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/federated-*.json)")
    args = parser.parse_args()
    started = time.monotonic()
    rounds = 5 if args.quick else 30
    configs = CONFIGS[:2] if args.quick else CONFIGS
    seeds = 1 if args.quick else args.seeds
    rows = []
    print(f"{'configuration':<32} {'partition':<14} {'final':>7} {'last-5 mean':>11}")
    for partition in PARTITIONS:
        for label, extra in configs:
            finals, tails = [], []
            for seed in range(seeds):
                report = run(partition, extra, rounds, seed)
                finals.append(report["round_accuracy"][-1])
                tails.append(statistics.mean(report["round_accuracy"][-5:]))
            row = {"configuration": label, "partition": partition, "seeds": seeds,
                   "final_accuracy": statistics.mean(finals),
                   "last5_accuracy": statistics.mean(tails)}
            rows.append(row)
            print(f"{label:<32} {partition:<14} {row['final_accuracy']:>7.4f} "
                  f"{row['last5_accuracy']:>11.4f}", flush=True)
    harness.write_report(harness.report_path("federated", args.report),
                         {"rounds": rounds, "clients": 10, "rows": rows})
    best = {p: max((r for r in rows if r["partition"] == p), key=lambda r: r["last5_accuracy"])
            for p in PARTITIONS}
    print("best by last-5 mean: " + "; ".join(
        f"{p} {r['configuration']} {r['last5_accuracy']:.4f}" for p, r in best.items())
        + f"  [{time.monotonic() - started:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
