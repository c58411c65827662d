"""An ordinary PyTorch training loop (digits MLP), plus the four lines marked `# ps` that make
it a parameter-server worker.

    python examples/embed_existing_loop.py                       # plain, one process
    paramserver serve --port 50051 --workers 2 &                 # then, per worker:
    RANK=0 WORLD_SIZE=2 python examples/embed_existing_loop.py --servers 127.0.0.1:50051
    RANK=1 WORLD_SIZE=2 python examples/embed_existing_loop.py --servers 127.0.0.1:50051

Under torchrun, RANK/WORLD_SIZE/LOCAL_RANK come from torchrun; each worker trains on its own
shard of the data; WORLD_SIZE must match the server's --workers. The update rule is the
server's (`serve --optimizer/--momentum`), at the learning rate of the wrapped optimizer.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import workers  # ps
from workers.data import epoch_batches, load_digits_dataset, shard_indices, steps_per_epoch
from workers.models import accuracy, digits_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", help="host:port[,...]; without it the loop runs alone")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    identity = workers.WorkerIdentity.from_env()  # rank 0 of 1 without torchrun
    data = load_digits_dataset()
    mine = shard_indices(len(data.y_train), identity.rank, identity.world_size, "split")
    steps = steps_per_epoch(len(data.y_train), identity.world_size, "split", args.batch_size)
    model = digits_mlp(seed=0).to(identity.device())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if args.servers:
        ps = workers.attach(model, args.servers)  # ps: register or join, pull the parameters
        optimizer = ps.optimizer(optimizer)  # ps: optimizer.step() now pushes and pulls

    device = identity.device()
    for epoch in range(args.epochs):
        for batch in epoch_batches(mine, steps, args.batch_size, seed=epoch * 1000 + identity.rank):
            x, y = data.x_train[batch].to(device), data.y_train[batch].to(device)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
    if args.servers:
        ps.close()  # ps
    print(json.dumps({"rank": identity.rank, "accuracy": accuracy(model.cpu(), data.x_test,
                                                                  data.y_test)}))


if __name__ == "__main__":
    main()
