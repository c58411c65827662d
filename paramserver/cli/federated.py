"""`paramserver federated`: a local federation (one server, N client processes, or clients
simulated in this process) on digits, with the accuracy of the global model per round."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from paramserver.cli.client import add_client_training, training_from_args
from paramserver.cli.common import (
    add_logging,
    add_server,
    server_cli_args,
    setup_logging,
    write_json,
)
from paramserver.cli.local_cluster import ClusterError, LocalCluster


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "federated", help="run a local federation on digits",
        description="Federated learning on the digits data: one parameter server runs the "
                    "rounds, clients with private, unevenly split data train locally.")
    parser.add_argument("--clients", type=int, default=10, help="clients (10)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds (30)")
    parser.add_argument("--simulate", action="store_true",
                        help="run the clients as threads in this process (many clients)")
    parser.add_argument("--report", type=Path, help="write a JSON summary here")
    parser.add_argument("--run-dir", type=Path, help="logs here (default: a temp dir)")
    add_client_training(parser)
    add_server(parser)
    add_logging(parser)
    parser.set_defaults(func=run, mode="federated")
    parser.epilog = ("--lr/--momentum/--optimizer/--aggregate come from --strategy; --fraction, "
                     "--min-clients, --round-timeout, --min-completion-rate, --clip-norm, "
                     "--reject-norm and --buffer (fedbuff) shape the rounds.")


def _server_args(args: argparse.Namespace) -> list[str]:
    from paramserver.federated import strategies

    strategy = strategies.get(args.strategy)
    opt = strategy.server_optimizer
    args.aggregate, args.optimizer = strategy.aggregation.value, opt.name
    args.lr, args.momentum = opt.lr, opt.momentum
    return ["--workers", str(args.clients), *server_cli_args(args), "--log-level",
            args.log_level]


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    if args.mode not in ("federated", "fedbuff"):
        print("federated: --mode must be federated or fedbuff")
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="paramserver-federated-"))
    try:
        summary = _federate(args, run_dir)
    except (ClusterError, RuntimeError) as error:
        print(f"federated failed: {error}\n(logs in {run_dir})")
        return 1
    write_json(args.report, summary)
    final = summary["round_accuracy"][-1] if summary["round_accuracy"] else float("nan")
    print(f"accuracy {final:.4f} after {summary['rounds']} rounds  wall {summary['wall_s']:.1f}s"
          f"  pushed {summary['bytes_pushed'] / 1e6:.2f} MB  pulled "
          f"{summary['bytes_pulled'] / 1e6:.2f} MB  dropouts {len(summary['dropouts'])}  "
          f"({args.strategy}, {args.clients} clients, {args.partition}, logs in {run_dir})")
    return 0


def _federate(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from paramserver.chaos import status
    from paramserver.federated.session import follow_rounds, run_client

    training = training_from_args(args)
    started = time.perf_counter()
    with LocalCluster(run_dir) as cluster:
        [(server, address)] = cluster.start_servers(1, _server_args(args))
        reports: list[dict[str, Any]] = []
        if args.simulate:
            errors: list[BaseException] = []

            def client(index: int) -> None:
                try:
                    report = run_client(address, index, args.clients, args.rounds, training,
                                        args.partition, args.codec, args.seed)
                    reports.append(dataclasses.asdict(report))
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=client, args=(i,), daemon=True)
                       for i in range(args.clients)]
            for thread in threads:
                thread.start()
            alive = lambda: any(t.is_alive() for t in threads)  # noqa: E731
        else:
            paths = [run_dir / f"client-{i}.json" for i in range(args.clients)]
            procs = [cluster.spawn(f"client-{i}", _client_args(args, i, address, paths[i]))
                     for i in range(args.clients)]
            alive = lambda: any(p.process.poll() is None for p in procs)  # noqa: E731

        def progress(round_: int, value: float) -> None:
            print(f"round {round_}/{args.rounds} accuracy {value:.4f}", flush=True)

        accuracies = follow_rounds(address, args.rounds, progress, alive)
        final = status(address)
        if args.simulate:
            for thread in threads:
                thread.join(60)
            if errors:
                raise RuntimeError(f"a simulated client failed: {errors[0]!r}")
        else:
            for managed in procs:
                managed.process.wait(60)
            cluster.check_failed(procs)
            reports = [json.loads(p.read_text()) for p in paths if p.exists()]
        cluster.stop(server)
    return {
        "round_accuracy": accuracies, "rounds": len(accuracies),
        "wall_s": time.perf_counter() - started,
        "bytes_pushed": sum(r["bytes_pushed"] for r in reports),
        "bytes_pulled": sum(r["bytes_pulled"] for r in reports),
        "dropouts": list(final.dropouts) if final else [],
        "skipped_rounds": list(final.skipped_rounds) if final else [],
        "clients": args.clients, "strategy": args.strategy, "partition": args.partition,
        "mode": args.mode, "fraction": args.fraction, "local_epochs": args.local_epochs,
        "codec": " ".join(str(c) for c in args.codec), "weighting": args.weighting,
        "client_examples": sorted(r["examples"] for r in reports),
    }


def _client_args(args: argparse.Namespace, index: int, address: str, report: Path) -> list[str]:
    return ["client", "--servers", address, "--index", str(index), "--clients",
            str(args.clients), "--rounds", str(args.rounds), "--report", str(report),
            "--local-epochs", str(args.local_epochs), "--batch-size", str(args.batch_size),
            "--client-lr", str(args.client_lr), "--client-momentum", str(args.client_momentum),
            *(["--prox-mu", str(args.prox_mu)] if args.prox_mu is not None else []),
            "--weighting", args.weighting, "--resample-to", str(args.resample_to),
            "--dropout", str(args.dropout), "--partition", args.partition,
            "--strategy", args.strategy, "--codec", " ".join(str(c) for c in args.codec),
            "--seed", str(args.seed), "--log-level", args.log_level]
