"""Compressed client updates per federated strategy (issue #17, item 5).

Runs `paramserver federated --simulate` on the issue's digits setting (10 clients,
Dirichlet 0.5, 30 rounds, 1 local epoch, client SGD lr 0.05, no momentum, batch 16) for
each strategy (FedAvg, FedAvgM, FedAdam) and each push codec the clients offer (none,
qsgd 8-bit, top-k with error feedback), one run at a time, and prints the final test
accuracy, the mean over the last 5 rounds and the bytes pushed.

    python -m benchmarks.fed_codecs [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.federated import run

STRATEGIES = ["fedavg", "fedavgm", "fedadam"]
CODECS = ["none", "qsgd:bits=8", "topk:ratio=0.1", "topk:ratio=0.01"]
SETTING = ["--client-lr", "0.05", "--client-momentum", "0", "--batch-size", "16",
           "--local-epochs", "1"]
PARTITION = "dirichlet:0.5"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds, fedavg only")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/fed_codecs-*.json)")
    args = parser.parse_args()
    started = time.monotonic()
    rounds = 5 if args.quick else args.rounds
    strategies = STRATEGIES[:1] if args.quick else STRATEGIES
    rows = []
    print(f"{'strategy':<9} {'codec':<16} {'final':>7} {'last-5 mean':>11} {'MB pushed':>10}")
    for strategy in strategies:
        for codec in CODECS:
            report = run(PARTITION, ["--strategy", strategy, "--codec", codec, *SETTING],
                         rounds, 0)
            accuracy = report["round_accuracy"]
            row = {"strategy": strategy, "codec": codec, "final_accuracy": accuracy[-1],
                   "last5_accuracy": statistics.mean(accuracy[-5:]),
                   "bytes_pushed": report["bytes_pushed"], "wall_s": report["wall_s"],
                   "round_accuracy": accuracy}
            rows.append(row)
            print(f"{strategy:<9} {codec:<16} {row['final_accuracy']:>7.4f} "
                  f"{row['last5_accuracy']:>11.4f} {row['bytes_pushed'] / 1e6:>10.2f}",
                  flush=True)
    harness.write_report(harness.report_path("fed_codecs", args.report),
                         {"rounds": rounds, "clients": 10, "partition": PARTITION,
                          "setting": SETTING, "rows": rows})
    print(f"[{time.monotonic() - started:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
