"""`paramserver bench`: this framework against the floor and the peers, in one run (#7).

The suite lives in the source checkout's `benchmarks/` and is not installed with the package,
so this command runs `python -m benchmarks.suite` at the root of the checkout this package
was imported from, and says how to get one when there is none.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # paramserver/
NO_CHECKOUT = ("paramserver bench runs from a source checkout (the benchmarks are not "
               "installed with the package): git clone the paramserver repository, then run "
               "`make bench` in it")
STOP_TIMEOUT_S = 30.0  # the suite ends its own servers and workers on SIGTERM first


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "bench", help="benchmark against bare gRPC/TCP, gloo all-reduce and an RPC server",
        description="Measure, on this machine and in one run: the floor (raw TCP and a bare "
                    "gRPC stream), our sync steps (1/16/100 MB, 1/2/4 workers, 1/2 shards, 4 "
                    "codecs) and async push rate, torch.distributed all-reduce over gloo and "
                    "a torch.distributed.rpc parameter server, the codecs under link caps "
                    "(tc in a network namespace), sync vs async vs SSP with a straggler, and "
                    "server memory. Prints tables and writes every figure as JSON (default: "
                    "runs/suite-*.json in the checkout). Runs from a source checkout only "
                    "(`python -m benchmarks.suite` there).")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset in under a minute (a smoke test)")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/suite-*.json)")
    parser.add_argument("--plot", type=Path,
                        help="PNG of step time against model size (default: the report's path "
                             "with .png)")
    parser.set_defaults(func=run)


def find_checkout(package_dir: Path | None = None) -> Path | None:
    """The root of the source checkout the package (`package_dir`, default: this one) sits
    in, if that checkout holds the suite; None for an installed package."""
    root = (package_dir or PACKAGE_DIR).parent
    return root if (root / "benchmarks" / "suite" / "__main__.py").is_file() else None


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so the `finally` below ends the suite


def run(args: argparse.Namespace) -> int:
    root = find_checkout()
    if root is None:
        print(NO_CHECKOUT, file=sys.stderr)
        return 2
    # Paths as the user meant them, from their working directory; the suite runs at the root.
    argv = [*(["--quick"] if args.quick else []),
            *(["--report", str(args.report.resolve())] if args.report else []),
            *(["--plot", str(args.plot.resolve())] if args.plot else [])]
    env = {**os.environ, "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR")}
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    suite = subprocess.Popen([sys.executable, "-m", "benchmarks.suite", *argv], cwd=root,
                             env=env, stdin=subprocess.DEVNULL)
    try:
        return suite.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if suite.poll() is None:  # SIGTERM lets it stop its own processes first
            suite.terminate()
            try:
                suite.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                suite.kill()
                suite.wait(10.0)
