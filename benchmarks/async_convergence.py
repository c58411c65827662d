"""Async convergence across seeds (issue #19): `launch --mode async --workers 2 --epochs 10`
with 10 seeds, under the default learning-rate rule (lr / live workers) and the old constant
rate, in one run; every final accuracy and the minimum per rule.

    python -m benchmarks.async_convergence [--seeds 10] [--report FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks import harness

RULES = ("workers", "constant")  # --async-lr: the default, and the rate before issue #19
BAR = 0.95


def accuracy(rule: str, seed: int, workdir: Path) -> float:
    report = workdir / f"{rule}-{seed}.json"
    subprocess.run([*harness.CLI, "launch", "--servers", "1", "--workers", "2", "--mode",
                    "async", "--epochs", "10", "--seed", str(seed), "--async-lr", rule,
                    "--no-progress", "--report", str(report)],
                   check=True, capture_output=True, timeout=600, cwd=harness.REPO)
    return float(json.loads(report.read_text())["accuracy"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--report", type=Path,
                        help="write the figures here (default: runs/async_convergence-*.json)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-async-"))
    figures: dict[str, list[float]] = {rule: [] for rule in RULES}
    for seed in range(args.seeds):  # rules interleaved: both see the same machine load
        for rule in RULES:
            figures[rule].append(accuracy(rule, seed, workdir))
            print(f"seed {seed} --async-lr {rule}: {figures[rule][-1]:.4f}", flush=True)
    harness.write_report(harness.report_path("async_convergence", args.report),
                         {"seeds": args.seeds, "accuracy": figures, "bar": BAR})
    print("  ".join(f"{rule}: min {min(v):.4f} mean {sum(v) / len(v):.4f} "
                    f">= {BAR}: {sum(a >= BAR for a in v)}/{len(v)}"
                    for rule, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
