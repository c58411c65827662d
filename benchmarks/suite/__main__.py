"""Run the suite against the floor and the peers: tables, then the JSON report and the plot.

    python -m benchmarks.suite [--quick] [--report FILE] [--plot FILE]

`paramserver bench` and `make bench` run this at the checkout's root. The report goes to
runs/suite-<time>.json unless --report says otherwise, and the plot next to it with .png.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from benchmarks import harness
from benchmarks.suite.plan import FULL, QUICK
from benchmarks.suite.runner import main as run_plan


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small subset in under a minute (a smoke test)")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/suite-*.json)")
    parser.add_argument("--plot", type=Path,
                        help="PNG of step time against model size (default: the report's path "
                             "with .png)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    # SIGTERM unwinds (exit 143), so the pool, the servers and a namespaced child end by pid.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Quiet gRPC's C core in every child (its INFO lines about GOAWAYs are not results).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    name = "suite-quick" if args.quick else "suite"
    report = harness.report_path(name, args.report).resolve()
    plot = args.plot.resolve() if args.plot else report.with_suffix(".png")
    # Absolute paths, so the run re-started in a network namespace writes the same files.
    again = [*(["--quick"] if args.quick else []), "--report", str(report), "--plot", str(plot)]
    return run_plan(QUICK if args.quick else FULL, again, report, plot,
                    log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
