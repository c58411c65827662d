"""Synchronous data-parallel training of a Dense(64, relu) -> Dense(10, softmax) model with
Adam and batches of 32 (the loop of a TensorFlow `MirroredStrategy` example), where the
strategy is a parameter server: one server
process holds the parameters and runs Adam; `--workers` worker processes each train on their
own shard of the digits data, and every step averages their gradients (sync mode).

    python examples/data_parallel.py --workers 2 --epochs 10 [--tls]

`--tls`: mutual TLS, with a throwaway CA issuing the server's and each replica's certificate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

import workers
from paramserver.cli.local_cluster import LocalCluster, run_in_processes
from paramserver.cli.security_options import client_security, make_local_cluster_tls, server_flags
from paramserver.security import AccessRole, ClientSecurity
from workers.data import epoch_batches, load_digits_dataset, shard_indices, steps_per_epoch
from workers.models import accuracy


def build_model() -> nn.Module:
    """Dense(64, relu) -> Dense(10); softmax is folded into the cross-entropy loss."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train_worker(rank: int, world: int, servers: str, epochs: int, batch_size: int,
                 security: ClientSecurity | None = None) -> float:
    """One replica: the document's loop, with the strategy's step going to the server."""
    data = load_digits_dataset()
    model = build_model()
    with workers.attach(model, servers, worker_id=f"replica-{rank}", mode="sync",
                        security=security) as ps:
        optimizer = ps.optimizer()  # Adam runs on the server (serve --optimizer adam)
        mine = shard_indices(len(data.y_train), rank, world, "split")
        steps = steps_per_epoch(len(data.y_train), world, "split", batch_size)
        for epoch in range(epochs):
            for batch in epoch_batches(mine, steps, batch_size, seed=epoch * 1000 + rank):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
                loss.backward()
                optimizer.step()
    return accuracy(model, data.x_test, data.y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (0.01)")
    parser.add_argument("--tls", action="store_true", help="mutual TLS with a throwaway CA")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ps-data-parallel-") as run_dir, \
            LocalCluster(Path(run_dir)) as cluster:
        names = [f"replica-{rank}" for rank in range(args.workers)]
        tls = (make_local_cluster_tls(Path(run_dir) / "tls", dict.fromkeys(names,
                                                                          AccessRole.WORKER))
               if args.tls else None)
        [(_, address)] = cluster.start_servers(1, [
            "--mode", "sync", "--workers", str(args.workers), "--optimizer", "adam",
            "--lr", str(args.lr), *server_flags(tls)])
        accuracies = run_in_processes(train_worker, [
            (rank, args.workers, address, args.epochs, args.batch_size,
             client_security(tls, names[rank])) for rank in range(args.workers)])
    print(json.dumps({"workers": args.workers, "accuracy": accuracies}))


if __name__ == "__main__":
    main()
