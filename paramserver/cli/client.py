"""`paramserver client`: one federated client process against a running server."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from paramserver.cli.options import add_logging, parse_codecs, setup_logging, write_json
from paramserver.cli.security_options import add_client_security, client_security_from_args
from paramserver.types import CodecSpec

if TYPE_CHECKING:
    from workers.federated import LocalTraining


def add_client_training(parser: argparse.ArgumentParser) -> None:
    """Local-training options of a federated client, shared with `federated`."""
    group = parser.add_argument_group("local training")
    group.add_argument("--local-epochs", type=int, default=1, help="epochs per round (1)")
    group.add_argument("--batch-size", type=int, default=16, help="local batch size (16)")
    group.add_argument("--client-lr", type=float, default=0.2, help="local SGD lr (0.2)")
    group.add_argument("--client-momentum", type=float, default=0.5,
                       help="local SGD momentum (0.5)")
    group.add_argument("--prox-mu", type=float, default=None,
                       help="FedProx mu (default: the strategy's)")
    group.add_argument("--weighting", default="examples",
                       help="weight reported per client: examples, uniform or capped:N")
    group.add_argument("--resample-to", type=int, default=0,
                       help="a client with fewer examples oversamples up to this many (0: off)")
    group.add_argument("--dropout", type=float, default=0.0,
                       help="simulation: chance a sampled client skips a round (0)")
    group.add_argument("--partition", default="iid",
                       help="iid, dirichlet:ALPHA (label skew) or quantity:ALPHA (0.5 ...)")
    group.add_argument("--strategy", default="fedavg",
                       help="fedavg, uniform, fedprox, fedavgm, fedadam")
    group.add_argument("--codec", type=parse_codecs, default=(CodecSpec("none"),),
                       help="codec offers for the model updates (none)")
    group.add_argument("--seed", type=int, default=0, help="partition and shuffling seed (0)")
    group.add_argument("--model", choices=["mlp", "logreg"], default="mlp",
                       help="the digits model: mlp (64-128-10, 9,610 parameters) or logreg "
                            "(logistic regression, 650: far less DP noise per round) (mlp)")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("client", help="one federated client against a running server",
                            description="Train the rounds this client is sampled for, on its "
                                        "own partition of the digits data.")
    parser.add_argument("--servers", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--index", type=int, required=True, help="this client's index")
    parser.add_argument("--clients", type=int, required=True, help="clients in the partition")
    parser.add_argument("--rounds", type=int, default=30, help="stop once the global model "
                                                               "reached this round (30)")
    parser.add_argument("--report", type=Path, help="write a JSON summary here")
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="send masked updates (secure aggregation): the server must run "
                             "--secure-aggregation, and refuses clients that do not")
    add_client_training(parser)
    add_client_security(parser)
    add_logging(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workers.federation import run_client

    setup_logging(args.log_level)
    report = run_client(args.servers, args.index, args.clients, args.rounds,
                        training_from_args(args), args.partition, args.codec, args.seed,
                        client_security_from_args(args))
    write_json(args.report, dataclasses.asdict(report))
    print(f"[client-{args.index}] {report.examples} examples, trained {report.rounds_trained} "
          f"rounds, dropped {report.rounds_dropped}", flush=True)
    return 0


def training_from_args(args: argparse.Namespace) -> LocalTraining:
    """The local-training options as the client's record (FedProx's mu from the strategy
    unless --prox-mu is given)."""
    from paramserver.federated import strategies
    from workers.federated import LocalTraining

    strategy = strategies.get(args.strategy)
    return LocalTraining(epochs=args.local_epochs, batch_size=args.batch_size,
                         lr=args.client_lr, momentum=args.client_momentum,
                         prox_mu=strategy.prox_mu if args.prox_mu is None else args.prox_mu,
                         resample_to=args.resample_to, weighting=args.weighting,
                         dropout=args.dropout, model=args.model,
                         # `client --secure-aggregation`; in `federated`, the server's flag
                         secure_aggregation=bool(getattr(args, "secure_aggregation", False)))
