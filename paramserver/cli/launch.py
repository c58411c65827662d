"""`paramserver launch`: a local cluster that trains the digits MLP end to end."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from paramserver.cli.common import (
    add_logging,
    add_server,
    add_training,
    server_cli_args,
    write_json,
)
from paramserver.cli.local_cluster import ClusterError, LocalCluster, ManagedProcess


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "launch", help="run a local cluster of server and worker processes",
        description="Start servers and workers as separate processes on 127.0.0.1, train the "
                    "digits MLP, show progress, and print a summary.")
    parser.add_argument("--servers", type=int, default=1,
                        help="parameter servers the model is sharded over (1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--report", type=Path, help="write a JSON summary here")
    parser.add_argument("--run-dir", type=Path,
                        help="where process logs go (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up (and stop every process) after this many seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_server(parser)
    add_training(parser)
    add_logging(parser)
    parser.set_defaults(func=run)


def _server_args(args: argparse.Namespace) -> list[str]:
    if args.checkpoint_dir is not None and "{index}" not in str(args.checkpoint_dir):
        args.checkpoint_dir = args.checkpoint_dir / "shard-{index}"  # one directory per shard
    return ["--workers", str(args.workers), *server_cli_args(args), "--log-level",
            args.log_level]


def _worker_args(args: argparse.Namespace, rank: int, servers: str, report: Path) -> list[str]:
    return ["worker", "--servers", servers, "--rank", str(rank), "--num-workers",
            str(args.workers), "--worker-id", f"worker-{rank}", "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--data", args.data, "--seed", str(args.seed),
            "--codec", " ".join(str(c) for c in args.codec),
            "--pull-codec", " ".join(str(c) for c in args.pull_codec), "--report", str(report),
            "--log-level", args.log_level, "--ef-momentum", str(args.ef_momentum),
            *(["--no-error-feedback"] if args.no_error_feedback else [])]


def run(args: argparse.Namespace) -> int:
    if args.servers < 1 or args.workers < 1:
        print("launch: --servers and --workers must be at least 1")
        return 2
    if args.ef_momentum and args.momentum:
        print(f"launch: --ef-momentum {args.ef_momentum} moves momentum to the workers; also "
              f"pass --momentum 0, or momentum is applied twice")
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="paramserver-launch-"))
    try:
        summary = _launch(args, run_dir)
    except ClusterError as error:
        print(f"launch failed: {error}\n(logs in {run_dir})")
        return 1
    write_json(args.report, summary)
    print(f"accuracy {summary['accuracy']:.4f}  steps {summary['steps']}  "
          f"wall {summary['wall_s']:.1f}s  pushed {summary['bytes_pushed'] / 1e6:.2f} MB  "
          f"pulled {summary['bytes_pulled'] / 1e6:.2f} MB  codec {summary['codec']} "
          f"(x{summary['compression_ratio']:.1f})  shard bytes {summary['shard_bytes']}  "
          f"({args.mode}, {args.workers} workers, {args.servers} servers, logs in {run_dir})")
    return 0


def _launch(args: argparse.Namespace, run_dir: Path) -> dict[str, object]:
    from workers.trainer import TrainConfig, evaluate_server_model, total_steps

    started = time.perf_counter()
    with LocalCluster(run_dir) as cluster:
        servers = cluster.start_servers(args.servers, _server_args(args))
        addresses = ",".join(address for _, address in servers)
        reports = [run_dir / f"worker-{rank}.json" for rank in range(args.workers)]
        workers = [cluster.spawn(f"worker-{rank}", _worker_args(args, rank, addresses, report))
                   for rank, report in enumerate(reports)]
        steps = total_steps(TrainConfig(servers=addresses, worker_id="", epochs=args.epochs,
                                        num_workers=args.workers, batch_size=args.batch_size,
                                        data=args.data))
        updates = steps if args.mode == "sync" else steps * args.workers  # async and ssp
        _wait_with_progress(cluster, [m for m, _ in servers], workers, addresses, updates, args)
        accuracy, version = evaluate_server_model(addresses)
        shard_bytes = _shard_bytes(addresses)
        for managed, _ in servers:
            cluster.stop(managed)
    worker_reports = [json.loads(path.read_text()) for path in reports]
    return {
        "accuracy": accuracy,
        "steps": version,
        "wall_s": time.perf_counter() - started,
        "bytes_pushed": sum(r["bytes_pushed"] for r in worker_reports),
        "bytes_pulled": sum(r["bytes_pulled"] for r in worker_reports),
        "mode": args.mode,
        "codec": worker_reports[0]["codec"],
        "pull_codec": worker_reports[0]["pull_codec"],
        "compression_ratio": _overall_ratio(worker_reports),
        "servers": args.servers,
        "workers": args.workers,
        "shard_bytes": shard_bytes,
        "epochs": args.epochs,
        "data": args.data,
        "worker_accuracy": [r["accuracy"] for r in worker_reports],
        "worker_step_s": [r["wall_s"] / max(r["steps"], 1) for r in worker_reports],
    }


def _overall_ratio(reports: list[dict]) -> float:
    """Uncompressed / sent gradient bytes over all workers (each report has its own ratio)."""
    sent = sum(r["bytes_pushed_gradients"] for r in reports)
    dense = sum(r["bytes_pushed_gradients"] * r["compression_ratio"] for r in reports)
    return dense / sent if sent else 1.0


def _shard_bytes(addresses: str) -> list[int]:
    from workers.connection import ServerConnection

    sizes = []
    for address in addresses.split(","):
        connection = ServerConnection(address, timeout_s=10.0)
        try:
            layout = connection.status().layout
            sizes.append(layout.nbytes if layout else 0)
        finally:
            connection.close()
    return sizes


def _wait_with_progress(cluster: LocalCluster, servers: list[ManagedProcess],
                        workers: list[ManagedProcess], addresses: str, updates: int,
                        args: argparse.Namespace) -> None:
    """Poll the first shard's version into a progress bar until every worker exits."""
    from tqdm import tqdm

    from paramserver.errors import ParamServerError
    from workers.connection import ServerConnection

    deadline = time.monotonic() + args.timeout
    connection = ServerConnection(addresses.split(",")[0], timeout_s=2.0)
    bar = tqdm(total=updates, unit="update", desc=f"{args.mode} x{args.workers}",
               disable=args.no_progress, dynamic_ncols=True)
    try:
        while any(w.process.poll() is None for w in workers):
            cluster.check_failed(workers)
            for server in servers:
                if server.process.poll() is not None:
                    raise ClusterError(f"{server.name} exited early:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"training did not finish within {args.timeout}s")
            try:
                bar.update(connection.status().version - bar.n)
            except ParamServerError:
                pass  # the server may be busy; the next poll will tell
            time.sleep(0.2)
        cluster.check_failed(workers)
        bar.update(updates - bar.n)
    finally:
        bar.close()
        connection.close()
