"""DP-FedAvg with more clients, simulated in one process (issue #17, item 2).

One server today takes at most 32 waiting long polls (JoinRound and pulls), which 100
simulated clients exceed, so this runs the same algorithm without the server: the digits
split over N clients, each round every client (fraction 1) trains 1 local epoch (SGD lr
0.05, no momentum, batch 16) from the global model, its update is clipped to C with the
server's own `clip_`, the sum gets `add_noise_` of std z*C, the sum is divided by N and
applied by server SGD (lr 1, momentum 0 or 0.9). z comes from `noise_for_epsilon` (epsilon
8 at delta 1e-5 over 30 rounds at q = 1) and the epsilon from `epsilon_of`, both
dp_accounting's RDP accountant as the server uses. The 10-client row checks this loop
against `benchmarks.fed_dp` (the real server). C is the median update norm at round 0, read
from the data: a deployment would fix it in advance (or spend privacy choosing it).

    python -m benchmarks.fed_dp_scale [--clients 10,100,600] [--report FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks import harness
from paramserver.federated.partition import partition
from paramserver.federated.privacy import (
    add_noise_,
    clip_,
    epsilon_of,
    fresh_generator,
    l2_norm,
    noise_for_epsilon,
)
from workers.data import load_digits_dataset
from workers.models import accuracy, digits_mlp

ROUNDS, EPSILON, DELTA, LR, BATCH = 30, 8.0, 1e-5, 0.05, 16


def local_update(model: nn.Module, start: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """global - local after one epoch of plain SGD from `start`."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(start[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    order = rng.permutation(len(y))
    for first in range(0, len(order), BATCH):
        batch = torch.from_numpy(order[first:first + BATCH])
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return {n: start[n] - p.detach() for n, p in model.named_parameters()}


def federation(clients: int, spec: str, z: float, momentum: float, seed: int = 0,
               ) -> dict:  # type: ignore[type-arg]
    data = load_digits_dataset()
    parts = partition(spec, data.y_train.numpy(), clients, seed, min_size=1)
    shards = [(data.x_train[p], data.y_train[p]) for p in parts]
    model, worker = digits_mlp(seed=seed), digits_mlp(seed=seed)
    rng, noise = np.random.default_rng(seed), fresh_generator(seed)
    velocity = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    clip_norm, accuracies = 0.0, []
    for _ in range(ROUNDS):
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        updates = [local_update(worker, start, x, y, rng) for x, y in shards]
        if not clip_norm:  # the median norm of the first round's updates
            clip_norm = float(np.median([l2_norm(u) for u in updates]))
        total = {n: torch.zeros_like(t) for n, t in start.items()}
        for update in updates:
            if z:
                clip_(update, clip_norm)
            for name, tensor in update.items():
                total[name] += tensor
        add_noise_(total, z * clip_norm, noise)
        with torch.no_grad():
            for name, param in model.named_parameters():
                velocity[name] = momentum * velocity[name] + total[name] / clients
                param.sub_(velocity[name])
        accuracies.append(accuracy(model, data.x_test, data.y_test))
    return {"clients": clients, "partition": spec, "noise_multiplier": z,
            "server_momentum": momentum, "clip_norm": clip_norm if z else 0.0,
            "epsilon": epsilon_of([(1.0, z)] * ROUNDS, DELTA) if z else float("inf"),
            "final_accuracy": accuracies[-1], "last5_accuracy": statistics.mean(accuracies[-5:]),
            "round_accuracy": accuracies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100,600")
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/fed_dp_scale-*)")
    args = parser.parse_args()
    started = time.monotonic()
    torch.set_num_threads(1)
    z = noise_for_epsilon(EPSILON, DELTA, 1.0, ROUNDS)
    print(f"z = {z:.4f} for epsilon {EPSILON} at delta {DELTA} over {ROUNDS} rounds, q = 1")
    print(f"{'clients':>7} {'DP':>4} {'momentum':>8} {'C':>7} {'final':>7} {'last-5':>7} "
          f"{'epsilon':>8}")
    rows = []
    for clients in (int(c) for c in args.clients.split(",")):
        for noise, momentum in ((0.0, 0.0), (0.0, 0.9), (z, 0.0), (z, 0.9)):
            row = federation(clients, args.partition, noise, momentum)
            rows.append(row)
            print(f"{clients:>7} {'yes' if noise else 'no':>4} {momentum:>8} "
                  f"{row['clip_norm']:>7.3f} {row['final_accuracy']:>7.4f} "
                  f"{row['last5_accuracy']:>7.4f} {row['epsilon']:>8.3f}", flush=True)
    harness.write_report(harness.report_path("fed_dp_scale", args.report),
                         {"rounds": ROUNDS, "epsilon": EPSILON, "delta": DELTA, "rows": rows})
    print(f"[{time.monotonic() - started:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
