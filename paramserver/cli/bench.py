"""`paramserver bench`: this framework against the floor and the peers, in one run (#7)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "bench", help="benchmark against bare gRPC/TCP, gloo all-reduce and an RPC server",
        description="Measure, on this machine and in one run: the floor (raw TCP and a bare "
                    "gRPC stream), our sync steps (1/16/100 MB, 1/2/4 workers, 1/2 shards, 4 "
                    "codecs) and async push rate, torch.distributed all-reduce over gloo and "
                    "a torch.distributed.rpc parameter server, the codecs under link caps "
                    "(tc in a network namespace), sync vs async vs SSP with a straggler, and "
                    "server memory. Prints tables; --report writes every figure as JSON. "
                    "Needs the benchmarks package (an editable install of the repository).")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset in under a minute (a smoke test)")
    parser.add_argument("--report", type=Path, help="write every figure here as JSON")
    parser.add_argument("--plot", type=Path,
                        help="PNG of step time against model size (default: the report's path "
                             "with .png, if --report is given)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Quiet gRPC's C core in every child (its INFO lines about GOAWAYs are not results).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        from benchmarks.suite.plan import FULL, QUICK
        from benchmarks.suite.runner import main
    except ImportError as error:
        print(f"bench: the benchmarks package is not importable ({error}); install the "
              "repository with `pip install -e .`")
        return 2
    report = args.report.resolve() if args.report else None
    plot = args.plot.resolve() if args.plot else (report.with_suffix(".png") if report else None)
    argv = [*(["--quick"] if args.quick else []), *(["--report", str(report)] if report else []),
            *(["--plot", str(plot)] if plot else [])]
    return main(QUICK if args.quick else FULL, argv, report, plot,
                log=lambda line: print(line, flush=True))
