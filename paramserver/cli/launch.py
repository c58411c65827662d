"""`paramserver launch`: a local cluster that trains a built-in model end to end."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from paramserver.cli.local_cluster import ClusterError
from paramserver.cli.options import add_logging, add_training, train_config, write_json
from paramserver.cli.server_options import (
    FAULTS,
    FEDERATED,
    SERVER,
    add_server_options,
    config_from_args,
    select,
)

# The server options except the job size (--workers here counts worker processes) and the
# codec limits (launch's servers accept every codec).
OPTIONS = select(groups=(SERVER, FAULTS, FEDERATED), without=("--workers",))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "launch", help="run a local cluster of server and worker processes",
        description="Start servers and workers as separate processes on 127.0.0.1, train the "
                    "digits MLP (or the CTR model: --model ctr), show progress, and print a "
                    "summary.")
    parser.add_argument("--servers", type=int, default=1,
                        help="parameter servers the model is sharded over (1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--report", type=Path, help="write a JSON summary here")
    parser.add_argument("--run-dir", type=Path,
                        help="where process logs go (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up (and stop every process) after this many seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS and authentication: a throwaway CA in RUN_DIR/tls "
                             "issues the servers' and each worker's certificate")
    add_server_options(parser, OPTIONS)
    add_training(parser)
    add_logging(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from paramserver.cli.local_training import LocalTraining, run_local_training

    try:
        job = LocalTraining(
            server=config_from_args(args, OPTIONS, expected_workers=max(args.workers, 1)),
            worker=train_config(args, servers="", worker_id=""), servers=args.servers,
            workers=args.workers, timeout_s=args.timeout, log_level=args.log_level,
            tls=args.tls)
    except ValueError as error:
        print(f"launch: {error}")
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="paramserver-launch-"))
    bar = tqdm(total=job.updates, unit="update", desc=f"{args.mode} x{args.workers}",
               disable=args.no_progress, dynamic_ncols=True)
    try:
        report = run_local_training(job, run_dir, on_version=lambda v: bar.update(v - bar.n))
        bar.update(job.updates - bar.n)
    except ClusterError as error:
        print(f"launch failed: {error}\n(logs in {run_dir})")
        return 1
    finally:
        bar.close()
    write_json(args.report, dataclasses.asdict(report))
    print(f"{report.metric} {report.accuracy:.4f}  steps {report.steps}  "
          f"wall {report.wall_s:.1f}s  pushed {report.bytes_pushed / 1e6:.2f} MB  "
          f"pulled {report.bytes_pulled / 1e6:.2f} MB  codec {report.codec} "
          f"(x{report.compression_ratio:.1f})  shard bytes {report.shard_bytes}  "
          f"({args.mode}, {args.workers} workers, {args.servers} servers"
          f"{', mutual TLS' if args.tls else ''}, logs in {run_dir})")
    if report.diverged():
        print(f"warning: the workers of this sync job ended on different versions "
              f"{report.worker_versions}: their final models differ", file=sys.stderr)
    return 0
