"""`paramserver worker`: the built-in trainer (digits or CTR) against a running server."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from paramserver.cli.options import (
    add_logging,
    add_training,
    setup_logging,
    train_config,
    write_json,
)
from paramserver.cli.security_options import add_client_security, client_security_from_args

if TYPE_CHECKING:
    from paramserver.security.credentials import ClientSecurity
    from workers.trainer import StepHook


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "worker", help="train the digits MLP (or --model ctr) against a server",
        description="Train an MLP 64-128-10 on scikit-learn's digits, or with --model ctr a "
                    "DLRM-like click-through-rate model on synthetic data (its embedding "
                    "tables row-sparse); the server holds the parameters and the optimizer.")
    parser.add_argument("--servers", "--server", dest="servers", default="127.0.0.1:50051",
                        help="server host:port, or several comma-separated in shard order")
    parser.add_argument("--worker-id", help="stable identity (default: worker-RANK)")
    parser.add_argument("--rank", type=int, default=0, help="this worker's index (0)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="workers in the job, for --data split (1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, s")
    parser.add_argument("--retry", type=float, default=60.0,
                        help="seconds to keep retrying an unreachable server (60)")
    parser.add_argument("--report", type=Path, help="write a JSON summary here")
    add_training(parser)
    add_client_security(parser)
    add_logging(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, before_push: StepHook | None = None) -> int:
    """Train; `before_push` is the trainer's hook (tests make a straggler with it)."""
    from paramserver.process_tuning import tune_process
    from workers.trainer import train

    setup_logging(args.log_level)
    tune_process()
    security = client_security_from_args(args)
    config = train_config(args, args.servers, args.worker_id or f"worker-{args.rank}",
                          args.rank, args.num_workers, timeout_s=args.timeout,
                          retry_s=args.retry, security=security)
    report = train(config, on_epoch=lambda e, loss, acc: print(
        f"[{config.worker_id}] epoch {e}/{config.epochs} loss {loss:.4f} "
        f"test {'auc' if config.model == 'ctr' else 'accuracy'} {acc:.4f}", flush=True),
        before_push=before_push)
    summary = {**dataclasses.asdict(report), "servers": len(args.servers.split(",")),
               "workers": args.num_workers}
    write_json(args.report, summary)
    print(f"[{config.worker_id}] done: {report.metric} {report.accuracy:.4f}, "
          f"{report.steps} steps, final version {report.version}, {report.wall_s:.1f}s",
          flush=True)
    _warn_if_out_of_lockstep(args.servers, config.worker_id, report.version, security)
    return 0


def _warn_if_out_of_lockstep(servers: str, worker_id: str, version: int,
                             security: ClientSecurity | None) -> None:
    """In a sync job every worker ends on the servers' final model: say so loudly when this
    worker's final version is not the version the servers hold as it finishes."""
    from paramserver.types import Mode
    from workers.probes import probe_status

    status = probe_status(servers.split(",")[0], security=security)
    if status is not None and status.mode is Mode.SYNC and status.version != version:
        print(f"warning: [{worker_id}] ended on version {version} but the sync job is at "
              f"version {status.version}: the workers of this job end on different models",
              file=sys.stderr, flush=True)
