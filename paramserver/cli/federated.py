"""`paramserver federated`: a local federation (one server, N client processes, or clients
simulated in this process) on digits, with the accuracy of the global model per round."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from paramserver.cli.client import add_client_training, training_from_args
from paramserver.cli.local_cluster import ClusterError
from paramserver.cli.options import add_logging, setup_logging, write_json
from paramserver.cli.server_options import (
    FAULTS,
    FEDERATED,
    SERVER,
    add_server_options,
    config_from_args,
    select,
)
from paramserver.types import Mode

# Not offered: --clients sizes the job; the strategy decides the aggregation and the server
# optimizer (all but its weight decay); the sync, SSP and async bounds and rates, and the
# sync step's unused-gradient rule, do not apply to rounds; --mode is offered below with
# the two federated modes only.
OPTIONS = select(groups=(SERVER, FAULTS, FEDERATED), without=(
    "--workers", "--mode", "--aggregate", "--optimizer", "--lr", "--momentum", "--beta1",
    "--beta2", "--eps", "--sync-quorum", "--staleness", "--max-staleness", "--async-lr",
    "--unused-gradients"))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "federated", help="run a local federation on digits",
        description="Federated learning on the digits data: one parameter server runs the "
                    "rounds, clients with private, unevenly split data train locally.")
    parser.add_argument("--clients", type=int, default=10, help="clients (10)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds (30)")
    parser.add_argument("--simulate", action="store_true",
                        help="run the clients as threads in this process (many clients)")
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS and authentication: a throwaway CA in RUN_DIR/tls "
                             "issues the server's and each client's certificate")
    parser.add_argument("--report", type=Path, help="write a JSON summary here")
    parser.add_argument("--run-dir", type=Path, help="logs here (default: a temp dir)")
    add_client_training(parser)
    parser.add_argument("--mode", choices=[Mode.FEDERATED.value, Mode.FEDBUFF.value],
                        default=Mode.FEDERATED.value,
                        help="federated: rounds of sampled clients; fedbuff: buffered "
                             "asynchronous federated (default: federated)")
    add_server_options(parser, OPTIONS)
    add_logging(parser)
    parser.set_defaults(func=run)
    parser.epilog = ("The server's aggregation and optimizer come from --strategy; --fraction, "
                     "--min-clients, --round-timeout, --min-completion-rate, --clip-norm, "
                     "--reject-norm and --buffer (fedbuff) shape the rounds; "
                     "--secure-aggregation turns secure aggregation on for the server and "
                     "every client.")


def run(args: argparse.Namespace) -> int:
    from paramserver.cli.local_federation import LocalFederation, run_local_federation
    from paramserver.federated import strategies

    setup_logging(args.log_level)
    try:
        strategy = strategies.get(args.strategy)
        server = config_from_args(
            args, OPTIONS, mode=Mode(args.mode), expected_workers=args.clients,
            aggregation=strategy.aggregation,
            optimizer=dataclasses.replace(strategy.server_optimizer,
                                          weight_decay=args.weight_decay))
        job = LocalFederation(
            server=server, training=training_from_args(args), clients=args.clients,
            rounds=args.rounds, partition=args.partition, codecs=args.codec, seed=args.seed,
            strategy=args.strategy, simulate=args.simulate, log_level=args.log_level,
            tls=args.tls)
    except ValueError as error:
        print(f"federated: {error}")
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="paramserver-federated-"))

    def progress(round_: int, value: float) -> None:
        print(f"round {round_}/{args.rounds} accuracy {value:.4f}", flush=True)

    try:
        report = run_local_federation(job, run_dir, progress)
    except (ClusterError, RuntimeError) as error:
        print(f"federated failed: {error}\n(logs in {run_dir})")
        return 1
    write_json(args.report, dataclasses.asdict(report))
    final = report.round_accuracy[-1] if report.round_accuracy else float("nan")
    print(f"accuracy {final:.4f} after {report.rounds} rounds  wall {report.wall_s:.1f}s"
          f"  pushed {report.bytes_pushed / 1e6:.2f} MB  pulled "
          f"{report.bytes_pulled / 1e6:.2f} MB  dropouts {len(report.dropouts)}  "
          f"({args.strategy}, {args.clients} clients, {args.partition}, logs in {run_dir})")
    return 0
