"""Federated averaging of `FedModel` (one Linear(10, 1) layer, MSE loss, local SGD with lr
0.01) with `workers.FedAvg` (the `torch.nn.FedAvg()` such examples call does not exist in
PyTorch): each client process trains on its
own private data (clients of very different sizes), then pushes its model update weighted by
its number of examples; a server running

    --mode sync --aggregate weighted --optimizer sgd --lr 1 --momentum 0

turns those into the example-weighted average of the client models: FedAvg.

    python examples/federated_averaging.py --clients 4 --rounds 10 [--tls]   # --tls: mutual TLS
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn, optim

import workers
from paramserver.cli.local_cluster import LocalCluster, run_in_processes
from paramserver.cli.security_options import client_security, make_local_cluster_tls, server_flags
from paramserver.security import AccessRole, ClientSecurity

CLIENT_SIZES = [400, 200, 60, 20]  # imbalanced on purpose
TRUE_SEED = 42


class FedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def client_data(client: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Private data of one client: y = x . w* + b* + noise, with a client-specific input shift."""
    truth = torch.Generator().manual_seed(TRUE_SEED)
    w, b = torch.randn(10, 1, generator=truth), torch.randn(1, generator=truth)
    own = torch.Generator().manual_seed(client)
    x = torch.randn(size, 10, generator=own) + 0.5 * client
    return x, x @ w + b + 0.1 * torch.randn(size, 1, generator=own)


def run_client(client: int, size: int, servers: str, rounds: int, local_epochs: int,
               security: ClientSecurity | None = None) -> list[float]:
    """The document's loop: local SGD over batches, then `fed_averaging.step(...)` per round.
    Returns the global model's loss on this client's data after every round."""
    inputs, labels = client_data(client, size)
    fed_model = FedModel()
    with workers.attach(fed_model, servers, worker_id=f"client-{client}", overlap=False,
                        security=security) as ps:
        fed_averaging = workers.FedAvg(ps)
        optimizer = optim.SGD(fed_model.parameters(), lr=0.01)
        losses = []
        for _ in range(rounds):
            for _ in range(local_epochs):
                for start in range(0, size, 10):
                    optimizer.zero_grad()
                    outputs = fed_model(inputs[start:start + 10])
                    loss = nn.MSELoss()(outputs, labels[start:start + 10])
                    loss.backward()
                    optimizer.step()
            fed_averaging.step(num_examples=size)  # the model is now the new global one
            with torch.no_grad():
                losses.append(float(nn.MSELoss()(fed_model(inputs), labels)))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=len(CLIENT_SIZES))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--tls", action="store_true", help="mutual TLS with a throwaway CA")
    args = parser.parse_args()
    sizes = [CLIENT_SIZES[i % len(CLIENT_SIZES)] for i in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="ps-fedavg-") as run_dir, \
            LocalCluster(Path(run_dir)) as cluster:
        names = [f"client-{client}" for client in range(args.clients)]
        tls = (make_local_cluster_tls(Path(run_dir) / "tls", dict.fromkeys(names,
                                                                          AccessRole.WORKER))
               if args.tls else None)
        [(_, address)] = cluster.start_servers(1, [
            "--mode", "sync", "--workers", str(args.clients), "--aggregate", "weighted",
            "--optimizer", "sgd", "--lr", "1", "--momentum", "0", *server_flags(tls)])
        losses = run_in_processes(run_client, [
            (client, size, address, args.rounds, args.local_epochs,
             client_security(tls, names[client])) for client, size in enumerate(sizes)])
    # The global model's loss over all clients' data, example-weighted, after each round.
    total = sum(sizes)
    per_round = [sum(n * client[r] for n, client in zip(sizes, losses)) / total
                 for r in range(args.rounds)]
    print(json.dumps({"clients": args.clients, "sizes": sizes, "round_loss": per_round}))


if __name__ == "__main__":
    main()
