"""Many simulated clients in bounded memory (issue #17): a client's model, session and
training state exist only while it trains a round it was sampled for.

The server samples from the population client-0 .. client-{N-1} whether connected or not
(`--population N`) and waits for every sampled client. Each round the driver works out the
same sample (`sample_clients`, from the seed, the round and the ids) and runs the sampled
clients on a few threads: each connects, joins the model, checks with the server that it is
sampled, trains, pushes its update and leaves; nobody waits for the round to close except
the next round's clients (their JoinRound). The data set is loaded and partitioned once;
a client's examples are a view of it, so memory does not grow with N.

Under --dp a client runs the privacy steps its JoinRound asks for before it pushes (clip to
C; with --dp distributed, its noise share), as `workers.federated.FederatedClient` does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from paramserver.federated.config import FederatedConfig
from paramserver.federated.partition import MIN_SIZE, partition
from paramserver.federated.sampling import sample_clients
from paramserver.security.credentials import ClientSecurity
from paramserver.types import CodecSpec
from workers.data import load_digits_dataset
from workers.federated import LocalTraining, client_weight, train_locally
from workers.models import digits_model
from workers.parameter_client import ParameterClient
from workers.update_steps import privacy_steps, run_steps


@dataclass
class PopulationReport:
    rounds_trained: int = 0  # client-rounds that pushed an update
    rounds_dropped: int = 0
    bytes_pushed: int = 0
    bytes_pulled: int = 0
    client_examples: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Population:
    """What to simulate: N clients on digits, their training, and the server's sampling."""

    servers: str
    clients: int
    rounds: int
    training: LocalTraining
    sampling: FederatedConfig
    partition: str = "iid"
    codecs: Sequence[CodecSpec] = (CodecSpec("none"),)
    seed: int = 0
    concurrency: int = 4  # clients training at once
    security: ClientSecurity | None = None


def run_population(job: Population) -> PopulationReport:
    """Run every round with the sampled clients only; returns totals over all of them."""
    data = load_digits_dataset()
    labels = data.y_train.numpy()
    parts = partition(job.partition, labels, job.clients, job.seed,
                      min_size=min(MIN_SIZE, len(labels) // job.clients))
    ids = {f"client-{i}" for i in range(job.clients)}
    report = PopulationReport(client_examples=sorted(len(p) for p in parts))
    f = job.sampling
    with ThreadPoolExecutor(job.concurrency, thread_name_prefix="sim-client") as pool:
        for round_ in range(job.rounds):
            sampled = sample_clients(ids, f.fraction, f.min_clients, f.seed, round_)
            indices = sorted(int(c.split("-")[1]) for c in sampled)
            calls = [pool.submit(_client_round, job, data.x_train[parts[i]],
                                 data.y_train[parts[i]], i, round_) for i in indices]
            for call in calls:
                trained, pushed, pulled = call.result()
                report.rounds_trained += trained
                report.rounds_dropped += not trained
                report.bytes_pushed += pushed
                report.bytes_pulled += pulled
    return report


def _client_round(job: Population, x: torch.Tensor, y: torch.Tensor, index: int,
                  round_: int) -> tuple[bool, int, int]:
    """Client `index` for one round: (whether it pushed, bytes pushed, bytes pulled)."""
    seed = job.seed * 7919 + index
    if random.Random(f"{seed}:{round_}").random() < job.training.dropout:
        return False, 0, 0  # a device that went away this round
    model = digits_model(job.training.model, seed=job.seed)
    with ParameterClient(job.servers, f"client-{index}", push_codecs=job.codecs,
                         security=job.security) as client:
        client.attach(model)  # registers the model if this is the very first client
        joined = client.join_round(round_)
        if joined.round != round_ or not joined.sampled:
            return False, client.bytes_pushed, client.bytes_pulled
        if client.pull(round_) != round_:
            return False, client.bytes_pushed, client.bytes_pulled  # closed meanwhile
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_locally(model, x, y, job.training, np.random.default_rng([seed, round_]),
                      anchor)
        with torch.no_grad():
            update = run_steps({n: anchor[n] - p for n, p in model.named_parameters()},
                               privacy_steps(joined))  # --dp: clip, (distributed) noise
            for name, param in model.named_parameters():
                param.grad = update[name]
        client.push(num_samples=client_weight(len(y), job.training.weighting))
        return True, client.bytes_pushed, client.bytes_pulled
