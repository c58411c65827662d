"""What a federated round costs (issue #17): start-up and steady per-round time of
`paramserver federated` (simulated clients, and client processes) next to Flower's
simulation engine on the same job, and the peak memory of a lazily simulated population
of 100 vs 1,000 clients.

The job (Flower's digits example): the digits MLP, 10 IID clients, all sampled, FedAvg, 1
local epoch of SGD lr 0.05, no momentum, batch 16. A round's time is the interval between
two successive rounds' accuracy lines (ours) or central evaluations (Flower); steady =
the median after the first 2 rounds; start-up = time to the first round's result minus
one steady round. `training` is the clients' local epochs alone (10 x 1 epoch, measured
in this process), so `round - training` is the framework's overhead per round.

    python -m benchmarks.federated_cost [--rounds 30] [--flower /tmp/flwr/bin/python]
                                        [--skip-scale] [--report FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness

JOB = ["--clients", "10", "--fraction", "1.0", "--local-epochs", "1", "--client-lr", "0.05",
       "--client-momentum", "0", "--batch-size", "16", "--partition", "iid"]
SKIP = 2  # rounds left out of the steady median (warm-up)


def _steady(stamps: list[float], first_is_round: bool) -> dict[str, Any]:
    """Start-up and per-round figures from the times results appeared."""
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    steady = statistics.median(intervals[SKIP:] or intervals)
    startup = stamps[0] - steady if first_is_round else stamps[0]
    return {"startup_s": startup, "round_s": steady, "rounds": len(intervals),
            "round_s_all": intervals}


def ours(rounds: int, extra: list[str]) -> dict[str, Any]:
    """`paramserver federated` with JOB and `extra`, timed from its per-round lines."""
    with tempfile.TemporaryDirectory(prefix="ps-fed-cost-") as tmp:
        report = Path(tmp) / "report.json"
        started = time.perf_counter()
        process = subprocess.Popen(
            [*harness.CLI, "federated", *JOB, "--rounds", str(rounds), "--report",
             str(report), "--run-dir", str(Path(tmp) / "run"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=harness.REPO)
        stamps, lines = [], []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("round "):
                stamps.append(time.perf_counter() - started)
        if process.wait(600) != 0:
            raise RuntimeError("federated failed:\n" + "".join(lines[-20:]))
        result = json.loads(report.read_text())
    return {**_steady(stamps, first_is_round=True), "accuracy": result["round_accuracy"][-1],
            "wall_s": result["wall_s"]}


def flower(python: str, rounds: int) -> dict[str, Any]:
    script = harness.REPO / "benchmarks" / "flower_digits.py"
    done = subprocess.run([python, str(script), "--rounds", str(rounds)], capture_output=True,
                          text=True, timeout=900, check=False)
    answers = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not answers:
        raise RuntimeError("flower run failed:\n" + done.stderr[-3000:])
    result = json.loads(answers[-1])
    stamps = [result["startup_s"]]  # the initial evaluation, before Ray starts the clients
    for interval in result["round_s"]:
        stamps.append(stamps[-1] + interval)
    return {**_steady(stamps[1:], first_is_round=True), "accuracy": result["accuracy"],
            "wall_s": result["wall_s"], "engine": result["engine"]}


def training_s(repeats: int = 5) -> float:
    """10 clients x 1 local epoch on their IID shards, in this process (median)."""
    import torch

    from workers.data import client_shard, load_digits_dataset
    from workers.federated import LocalTraining, train_locally
    from workers.models import digits_mlp

    torch.set_num_threads(1)  # compute alone, not torch threads contending for 2 cores
    data = load_digits_dataset()
    shards = [client_shard(data, "iid", 10, i) for i in range(10)]
    training = LocalTraining(lr=0.05, momentum=0.0, batch_size=16)
    model = digits_mlp()
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for x, y in shards:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(anchor[name])
            train_locally(model, x, y, training, np.random.default_rng(0), anchor)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def breakdown(rounds: int = 12) -> dict[str, float]:
    """Where a simulated round's time goes: 10 clients as threads of this process against a
    server process, every client call timed (seconds per round, summed over the clients;
    `round` is wall time per round, after a warm-up round)."""
    import threading

    from paramserver.cli.local_cluster import LocalCluster
    from paramserver.cli.server_options import serve_args
    from paramserver.federated import strategies
    from paramserver.server.config import ServerConfig
    from paramserver.types import Mode
    from workers import federated, federation
    from workers.parameter_client import ParameterClient

    totals: dict[str, float] = {}
    lock = threading.Lock()

    def timed(name: str, call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                with lock:
                    totals[name] = totals.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    originals = {n: getattr(ParameterClient, n) for n in ("join_round", "push", "pull")}
    for name, call in originals.items():
        setattr(ParameterClient, name, timed(name, call))
    train = federated.FederatedClient._train_locally
    federated.FederatedClient._train_locally = timed("train", train)  # type: ignore[method-assign]
    fedavg = strategies.get("fedavg")
    config = ServerConfig(mode=Mode.FEDERATED, expected_workers=10,
                          aggregation=fedavg.aggregation, optimizer=fedavg.server_optimizer)
    training = federated.LocalTraining(lr=0.05, momentum=0.0, batch_size=16)
    stamps: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ps-fed-profile-") as tmp, \
                LocalCluster(Path(tmp)) as cluster:
            [(server, address)] = cluster.start_servers(1, serve_args(config))
            threads = [threading.Thread(target=federation.run_client, daemon=True, args=(
                address, i, 10, rounds + 1, training, "iid", ())) for i in range(10)]
            for thread in threads:
                thread.start()

            def on_round(round_: int, accuracy: float) -> None:
                stamps.append(time.perf_counter())
                if round_ == 1:  # the warm-up round is over: count from here
                    with lock:
                        totals.clear()

            federation.follow_rounds(address, rounds + 1, on_round,
                                     lambda: any(t.is_alive() for t in threads))
            for thread in threads:
                thread.join(60)
            cluster.stop(server)
    finally:
        for name, call in originals.items():
            setattr(ParameterClient, name, call)
        federated.FederatedClient._train_locally = train  # type: ignore[method-assign]
    per_round = {name: value / rounds for name, value in totals.items()}
    return {"round": (stamps[-1] - stamps[0]) / (len(stamps) - 1), **per_round}


def scale(clients: int, rounds: int = 20) -> dict[str, Any]:
    """A lazily simulated population: peak memory, wall time, accuracy."""
    with tempfile.TemporaryDirectory(prefix="ps-fed-scale-") as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([*harness.CLI, "federated", "--clients", str(clients), "--rounds",
                        str(rounds), "--fraction", "0.05", "--simulate", "--lazy",
                        "--client-lr", "0.05", "--client-momentum", "0", "--report",
                        str(report), "--run-dir", str(Path(tmp) / "run")],
                       check=True, capture_output=True, text=True, cwd=harness.REPO,
                       timeout=1800)
        result = json.loads(report.read_text())
    return {"clients": clients, "rounds": result["rounds"], "wall_s": result["wall_s"],
            "accuracy": result["round_accuracy"][-1], "peak_rss_mb": result["peak_rss_mb"],
            "skipped_rounds": len(result["skipped_rounds"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--flower", help="a python with flwr[simulation] (default: skip)")
    parser.add_argument("--skip-scale", action="store_true",
                        help="leave out the 100 vs 1,000 client memory runs")
    parser.add_argument("--report", type=Path, help="JSON here (default: runs/)")
    args = parser.parse_args()
    rows: dict[str, Any] = {"training_s": training_s()}
    runs = [("ours --simulate", lambda: ours(args.rounds, ["--simulate"])),
            ("ours, client processes", lambda: ours(args.rounds, []))]
    if args.flower:
        runs.append(("flower simulation", lambda: flower(args.flower, args.rounds)))
    print(f"local training alone (10 clients x 1 epoch): {rows['training_s']:.3f} s")
    print(f"{'engine':<26} {'start-up s':>10} {'round s':>8} {'overhead s':>10} {'acc':>7}")
    for name, run in runs:
        row = rows[name] = run()
        print(f"{name:<26} {row['startup_s']:>10.2f} {row['round_s']:>8.3f} "
              f"{row['round_s'] - rows['training_s']:>10.3f} {row['accuracy']:>7.4f}",
              flush=True)
    rows["breakdown"] = parts = breakdown()
    print("a simulated round (s; client calls summed over the 10 clients): " + ", ".join(
        f"{name} {value:.3f}" for name, value in parts.items()), flush=True)
    if not args.skip_scale:
        print(f"{'lazy population':<16} {'rounds':>6} {'wall s':>7} {'local MB':>9} "
              f"{'server MB':>9} {'acc':>7}")
        for clients in (100, 1000):
            row = rows[f"scale {clients}"] = scale(clients)
            memory = row["peak_rss_mb"]
            print(f"{clients:<16} {row['rounds']:>6} {row['wall_s']:>7.1f} "
                  f"{memory['local']:>9.0f} {memory['server']:>9.0f} {row['accuracy']:>7.4f}",
                  flush=True)
    harness.write_report(harness.report_path("federated_cost", args.report), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
