"""DP-FedAvg's accuracy at a privacy budget on digits (issue #17, item 2).

Runs `paramserver federated --simulate` on the issue's setting (Dirichlet 0.5, 30 rounds,
1 local epoch, client SGD lr 0.05, no momentum, batch 16), with uniform weighting, with and
without DP, at 10 clients and at more (100 and 1,000 as lazy populations, `--lazy`), one
run at a time; prints the final and last-5 accuracy, the noise multiplier, the epsilon
(delta 1e-5) the server's accountant reports and the wall time. The "10 logreg" rows run
the issue's 10 clients with `--model logreg` in 3 long rounds, the best 10-client
configuration found; `benchmarks.fed_dp_bound` shows why it stays near 0.54.

    python -m benchmarks.fed_dp [--only LABEL-PREFIX] [--rounds N] [--seed S] [--report FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.federated import run

SETTING = ["--client-lr", "0.05", "--client-momentum", "0", "--batch-size", "16",
           "--local-epochs", "1", "--fraction", "1.0"]
PARTITION = "dirichlet:0.5"
DP = ["--dp", "central", "--dp-delta", "1e-5"]
LOGREG = ["--model", "logreg", "--rounds", "3", "--local-epochs", "5", "--client-lr", "0.5"]


def _population(label: str, clients: int, fraction: str, clip: str, extra: list[str],
                ) -> list[tuple[str, int, list[str]]]:
    """No DP and central DP at epsilon <= 8, FedAvg and FedAvgM, on a lazy population."""
    flags = ["--lazy", "--fraction", fraction, *extra]
    dp = [*DP, "--clip-norm", clip, "--target-epsilon", "8"]
    return [(f"{label} lazy no DP", clients, [*flags, "--strategy", "uniform"]),
            (f"{label} lazy no DP fedavgm", clients, [*flags, "--strategy", "fedavgm",
                                                       "--weighting", "uniform"]),
            (f"{label} lazy central eps<=8", clients, [*flags, *dp]),
            (f"{label} lazy central eps<=8 fedavgm", clients, [*flags, *dp, "--strategy",
                                                                "fedavgm"])]


# (label, clients, flags); C is below the median update norm at round 0 (0.38 at 10
# clients)
CONFIGS = [
    ("10 no DP (uniform)", 10, ["--strategy", "uniform"]),
    ("10 clip 0.3 only", 10, ["--strategy", "uniform", "--clip-norm", "0.3"]),
    ("10 central eps<=8", 10, [*DP, "--clip-norm", "0.3", "--target-epsilon", "8"]),
    ("10 distributed eps<=8", 10, ["--dp", "distributed", "--clip-norm", "0.3",
                                   "--target-epsilon", "8"]),
    ("10 central z=0.3", 10, [*DP, "--clip-norm", "0.3", "--noise-multiplier", "0.3"]),
    ("10 central z=0.1", 10, [*DP, "--clip-norm", "0.3", "--noise-multiplier", "0.1"]),
    ("10 central eps<=8 fedavgm", 10, [*DP, "--clip-norm", "0.3", "--target-epsilon", "8",
                                       "--strategy", "fedavgm"]),
    ("10 central eps<=8 fedavgm C=0.1", 10, [*DP, "--clip-norm", "0.1", "--target-epsilon",
                                             "8", "--strategy", "fedavgm"]),
    ("10 central eps<=8 fedadam", 10, [*DP, "--clip-norm", "0.3", "--target-epsilon", "8",
                                       "--strategy", "fedadam"]),
    # 30 clients and the observer fit under the server's 32 waiting long polls (JoinRound
    # and pulls), which 100 eager simulated clients exceed (--max-long-polls)
    # The 10 clients with the 650-parameter logistic regression (--model logreg) and
    # a few long rounds: 3 rounds at epsilon 8 need z = 1.10 (30 need 3.49); each client
    # runs 5 epochs at lr 0.5, so its update (norm ~4.8 at round 0) carries more than the
    # clip norm C = 2 lets through. "--rounds" here overrides this script's --rounds.
    ("10 logreg no DP (uniform)", 10, ["--model", "logreg", "--strategy", "uniform"]),
    ("10 logreg no DP 3 rounds", 10, [*LOGREG, "--strategy", "uniform"]),
    ("10 logreg central eps<=8 3 rounds", 10, [*LOGREG, *DP, "--clip-norm", "2",
                                               "--target-epsilon", "8"]),
    ("10 logreg distributed eps<=8 3 rounds", 10, [*LOGREG, "--dp", "distributed",
                                                   "--clip-norm", "2", "--target-epsilon",
                                                   "8"]),
    ("30 no DP (uniform)", 30, ["--strategy", "uniform"]),
    ("30 central eps<=8", 30, [*DP, "--clip-norm", "0.15", "--target-epsilon", "8"]),
    ("30 central eps<=8 fedavgm", 30, [*DP, "--clip-norm", "0.15", "--target-epsilon", "8",
                                       "--strategy", "fedavgm"]),
    # More clients through the server: lazy populations (--lazy, the server samples from
    # --population N). C = the median update norm of round 0 from benchmarks.fed_dp_scale
    # (0.06 at 100 Dirichlet clients, 0.13 at 1,000 IID); Dirichlet(0.5) over 1,000 clients
    # leaves some with no example, so 1,000 runs IID. No-DP rows weigh clients uniformly.
    *_population("100", 100, "1.0", "0.06", []),
    *_population("100 q=0.1", 100, "0.1", "0.06", []),
    *_population("1000 q=0.1", 1000, "0.1", "0.13", ["--partition", "iid"]),
    *_population("1000 q=0.05", 1000, "0.05", "0.13", ["--partition", "iid"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the configurations starting so")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="partition and sampling seed")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/fed_dp-*.json)")
    args = parser.parse_args()
    started = time.monotonic()
    rows = []
    print(f"{'configuration':<40} {'final':>7} {'last-5':>7} {'z':>7} {'epsilon':>8} "
          f"{'wall s':>7}")
    for label, clients, flags in CONFIGS:
        if not label.startswith(args.only):
            continue
        try:
            report = run(PARTITION, ["--clients", str(clients), *SETTING, *flags],
                         args.rounds, args.seed)
        except subprocess.CalledProcessError as error:
            print(f"{label:<40} failed: {error.stdout[-300:]}", flush=True)
            rows.append({"configuration": label, "error": error.stdout[-2000:]})
            continue
        accuracy = report["round_accuracy"]
        privacy = report.get("privacy") or {}
        row = {"configuration": label, "clients": clients, "flags": flags,
               "final_accuracy": accuracy[-1], "last5_accuracy": statistics.mean(accuracy[-5:]),
               "noise_multiplier": privacy.get("noise_multiplier", 0.0),
               "epsilon": privacy.get("epsilon", float("inf")), "privacy": privacy,
               "round_accuracy": accuracy, "round_epsilon": report.get("round_epsilon", []),
               "wall_s": report["wall_s"]}
        rows.append(row)
        print(f"{label:<40} {row['final_accuracy']:>7.4f} {row['last5_accuracy']:>7.4f} "
              f"{row['noise_multiplier']:>7.3f} {row['epsilon']:>8.3f} {row['wall_s']:>7.1f}",
              flush=True)
    harness.write_report(harness.report_path("fed_dp", args.report),
                         {"rounds": args.rounds, "partition": PARTITION, "setting": SETTING,
                          "seed": args.seed, "rows": rows})
    print(f"[{time.monotonic() - started:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
