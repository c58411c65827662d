"""`paramserver federated`: a local federation (one server, N client processes, or clients
simulated in this process) on digits, with the accuracy of the global model per round."""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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
from paramserver.cli.status import describe_privacy
from paramserver.federated.privacy import PrivacyReport, noise_for_epsilon, rounds_within
from paramserver.types import Aggregation, Mode

if TYPE_CHECKING:  # the federation (torch) loads only when one runs
    from paramserver.cli.local_federation import FederationReport

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
    parser.add_argument("--shards", type=int, default=1,
                        help="server shards the model is split over (1); shard 0 leads the "
                             "rounds, the others close each round as it did")
    parser.add_argument("--simulate", action="store_true",
                        help="run the clients as threads in this process (many clients)")
    parser.add_argument("--lazy", action="store_true",
                        help="with --simulate: create a client only for the rounds it is "
                             "sampled for (bounded memory for many clients); the server "
                             "samples from the population of --clients (--population)")
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
        rounds = plan_privacy(args)
        if args.lazy:
            args.population = args.clients
        server = config_from_args(
            args, OPTIONS, mode=Mode(args.mode), expected_workers=args.clients,
            aggregation=Aggregation.MEAN if args.dp != "off" else strategy.aggregation,
            optimizer=dataclasses.replace(strategy.server_optimizer,
                                          weight_decay=args.weight_decay))
        job = LocalFederation(
            server=server, training=training_from_args(args), clients=args.clients,
            rounds=rounds, partition=args.partition, codecs=args.codec, seed=args.seed,
            strategy=args.strategy, simulate=args.simulate, log_level=args.log_level,
            tls=args.tls, shards=args.shards, lazy=args.lazy)
    except ValueError as error:
        print(f"federated: {error}")
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="paramserver-federated-"))

    spent: dict[int, float] = {}

    def progress(round_: int, value: float) -> None:
        privacy = f"  epsilon {spent[round_]:.3f}" if round_ in spent else ""
        print(f"round {round_}/{rounds} accuracy {value:.4f}{privacy}", flush=True)

    try:
        report = run_local_federation(job, run_dir, progress, spent.__setitem__)
    except (ClusterError, RuntimeError) as error:
        print(f"federated failed: {error}\n(logs in {run_dir})")
        return 1
    write_json(args.report, dataclasses.asdict(report))
    final = report.round_accuracy[-1] if report.round_accuracy else float("nan")
    print(f"accuracy {final:.4f} after {report.rounds} rounds  wall {report.wall_s:.1f}s"
          f"  pushed {report.bytes_pushed / 1e6:.2f} MB  pulled "
          f"{report.bytes_pulled / 1e6:.2f} MB  dropouts {len(report.dropouts)}  "
          f"({args.strategy}, {args.clients} clients, {args.partition}, logs in {run_dir})")
    if report.privacy:
        print(f"privacy: {describe_privacy(PrivacyReport(**report.privacy))}")
    print_reproducibility(report)
    return 0


def print_reproducibility(report: FederationReport) -> None:
    """What makes two runs with one seed differ, said aloud (issue #17): the clients a round
    closed without (late or gone: client@round) and rounds scored with a later model."""
    if report.dropouts:
        print(f"dropped (not counted): {' '.join(report.dropouts)}")
    if report.unobserved_rounds:
        print(f"rounds {report.unobserved_rounds} show a later round's accuracy: the "
              "observer missed their version")
    print(f"final model sha256 {report.model_sha256[:16]}")


def plan_privacy(args: argparse.Namespace) -> int:
    """--dp with --target-epsilon: compute the noise multiplier from the target and the
    planned rounds when --noise-multiplier is not given, or cut the rounds to what the
    budget allows when it is (the server would stop there anyway). Prints what it decided;
    returns the rounds to run."""
    if args.dp == "off" or not args.target_epsilon:
        if args.dp != "off":
            print("privacy: --dp weights every client the same (--aggregate mean); "
                  f"{args.strategy}'s server optimizer applies the noisy mean")
        return int(args.rounds)
    q = expected_sampling_rate(args.clients, args.fraction, args.min_clients)
    if not args.noise_multiplier:
        args.noise_multiplier = noise_for_epsilon(args.target_epsilon, args.dp_delta, q,
                                                  args.rounds)
        print(f"privacy: noise multiplier {args.noise_multiplier:.4f} computed so that "
              f"{args.rounds} rounds at sampling rate {q:.3g} spend epsilon <= "
              f"{args.target_epsilon:g} at delta {args.dp_delta:g}")
        return int(args.rounds)
    allowed = rounds_within(args.target_epsilon, args.dp_delta, q, args.noise_multiplier,
                            args.rounds)
    if allowed < args.rounds:
        print(f"privacy: --target-epsilon {args.target_epsilon:g} allows {allowed} of "
              f"{args.rounds} rounds at noise multiplier {args.noise_multiplier:g}")
    if allowed < 1:
        raise ValueError("--target-epsilon is too small for a single round at this "
                         "--noise-multiplier")
    return allowed


def expected_sampling_rate(clients: int, fraction: float, min_clients: int) -> float:
    """q = sampled / clients, as the server samples when every client is live."""
    return min(clients, max(min_clients, math.ceil(fraction * clients))) / clients
