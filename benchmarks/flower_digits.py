"""Flower's simulation engine on the same job as `paramserver federated` (issue #17): the
digits MLP, 10 IID clients, FedAvg, 1 local epoch of SGD (lr 0.05, no momentum, batch 16).

Runs under an interpreter that has `flwr[simulation]` (a throwaway venv; never the
project's): `/tmp/flwr/bin/python benchmarks/flower_digits.py --rounds 30`. Prints one
JSON line: the time from the start to the initial evaluation (start-up), and the time
between successive rounds' central evaluations (a round: sample, fit on every client,
aggregate). Needs nothing from this repository.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import time
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def _data(clients: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                  tuple[torch.Tensor, torch.Tensor]]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y_tr)), clients)
    return ([(torch.from_numpy(x_tr[p]), torch.from_numpy(y_tr[p])) for p in parts],
            (torch.from_numpy(x_te), torch.from_numpy(y_te)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _get(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters()]


def _set(model: nn.Module, values: list[np.ndarray]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(torch.from_numpy(v))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    fl: Any = importlib.import_module("flwr")
    simulation: Any = importlib.import_module("flwr.simulation")
    shards, (x_test, y_test) = _data(args.clients)
    stamps: list[float] = []
    accuracy: list[float] = []

    class DigitsClient(fl.client.NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.x, self.y = shards[index]
            self.model = _model()

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            _set(self.model, parameters)
            optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
            order = torch.randperm(len(self.y))
            for start in range(0, len(order), 16):
                batch = order[start:start + 16]
                optimizer.zero_grad()
                nn.functional.cross_entropy(self.model(self.x[batch]), self.y[batch]).backward()
                optimizer.step()
            return _get(self.model), len(self.y), {}

    def evaluate(server_round: int, parameters: list[np.ndarray], config: Any) -> Any:
        model = _model()
        _set(model, parameters)
        with torch.no_grad():
            accuracy.append(float((model(x_test).argmax(1) == y_test).float().mean()))
        stamps.append(time.perf_counter() - started)
        return 0.0, {}

    def client_fn(context: Any) -> Any:
        return DigitsClient(int(context.node_config["partition-id"])).to_client()

    def server_fn(context: Any) -> Any:
        strategy = fl.server.strategy.FedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients,
            min_available_clients=args.clients, evaluate_fn=evaluate,
            initial_parameters=fl.common.ndarrays_to_parameters(_get(_model())))
        return fl.server.ServerAppComponents(
            strategy=strategy, config=fl.server.ServerConfig(num_rounds=args.rounds))

    simulation.run_simulation(server_app=fl.server.ServerApp(server_fn=server_fn),
                              client_app=fl.client.ClientApp(client_fn=client_fn),
                              num_supernodes=args.clients)
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    print(json.dumps({"engine": "flower " + fl.__version__, "startup_s": stamps[0],
                      "round_s": intervals, "accuracy": accuracy[-1],
                      "wall_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
