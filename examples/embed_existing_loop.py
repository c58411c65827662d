"""An ordinary PyTorch training loop (digits MLP), plus the lines marked `# ps` that make
it a parameter-server worker.

    python examples/embed_existing_loop.py                       # plain, one process
    paramserver serve --port 50051 --workers 2 &                 # then, per worker:
    RANK=0 WORLD_SIZE=2 python examples/embed_existing_loop.py --servers 127.0.0.1:50051
    RANK=1 WORLD_SIZE=2 python examples/embed_existing_loop.py --servers 127.0.0.1:50051

Under torchrun, RANK/WORLD_SIZE/LOCAL_RANK come from torchrun; each worker trains on its own
shard of the data; WORLD_SIZE must match the server's --workers. The update rule is the
server's (`serve --optimizer/--momentum`), at the learning rate of the wrapped optimizer.
Across hosts, with elastic restarts (see the README's torchrun section):

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST0:29400 \
        --max-restarts 1 examples/embed_existing_loop.py --servers ps-0:50051,ps-1:50051

The loop walks the job's steps (`ps.job_steps`): in a sync job the servers' version is the
step, so a rank torchrun restarts mid-job takes up where the job is, on the same batches.
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import torch
from torch import nn

import workers  # ps
from workers.data import epoch_batches, load_digits_dataset, shard_indices, steps_per_epoch
from workers.models import accuracy, digits_mlp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", help="host:port[,...]; without it the loop runs alone")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    identity = workers.WorkerIdentity.from_env()  # rank 0 of 1 without torchrun
    data = load_digits_dataset()
    mine = shard_indices(len(data.y_train), identity.rank, identity.world_size, "split")
    steps = steps_per_epoch(len(data.y_train), identity.world_size, "split", args.batch_size)
    model = digits_mlp(seed=0).to(identity.device())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if args.servers:
        ps = workers.attach(model, args.servers)  # ps: register or join, pull the parameters
        optimizer = ps.optimizer(optimizer)  # ps: optimizer.step() now pushes and pulls

    @functools.lru_cache(maxsize=1)
    def batches(epoch: int) -> list[np.ndarray]:  # this rank's batches of `epoch`
        return epoch_batches(mine, steps, args.batch_size, seed=epoch * 1000 + identity.rank)

    device = identity.device()
    total, taken = args.epochs * steps, 0
    for step in ps.job_steps(total) if args.servers else range(total):  # ps
        batch = batches(step // steps)[step % steps]
        x, y = data.x_train[batch].to(device), data.y_train[batch].to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        taken += 1
    version = ps.version if args.servers else total
    if args.servers:
        ps.close()  # ps
    print(json.dumps({"rank": identity.rank, "worker_id": identity.worker_id,
                      "version": version, "steps": taken,
                      "accuracy": accuracy(model.cpu(), data.x_test, data.y_test)}))


if __name__ == "__main__":
    main()
