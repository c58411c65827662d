"""`python -m testbed --cleanup`: delete the namespaces, links and processes that killed
test-bed runs left behind (those whose owner process is gone), and end their delay
processes (testbed/delay_queue.py, known by the bed namespace in their argv), also those
whose namespace is gone."""

from __future__ import annotations

import argparse
import sys

from testbed.netns import cleanup_leftovers, end_stray_delays, namespaces


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed")
    parser.add_argument("--cleanup", action="store_true",
                        help="delete the leftovers of dead runs")
    parser.add_argument("--prefix", help="with --cleanup: delete this run's, alive or not")
    args = parser.parse_args()
    if args.cleanup:
        for name in cleanup_leftovers(args.prefix):
            print(f"deleted {name}")
        for pid in end_stray_delays(args.prefix):
            print(f"ended delay process {pid}")
    for name in namespaces():
        print(f"still present: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
