"""Federated clients on the parameter servers.

`FedAvg` marks one client's round boundary: after local training, one call pushes the
model update (global - local) weighted by the client's examples; a server
with `--aggregate weighted --optimizer sgd --lr 1 --momentum 0` makes the new global model
the example-weighted average of the client models.

`FederatedClient` runs whole rounds against a `--mode federated` (or `fedbuff`) server:
wait for a round it is sampled in, pull the global model, train E local epochs on its own
data (FedProx's proximal term, resampling of a small client, as configured), push.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from paramserver.errors import FailedPrecondition
from paramserver.federated.privacy import fresh_generator
from paramserver.types import Mode, PushResult
from workers.attach import AttachedModel
from workers.secure_aggregation import DEFAULT_STEPS, SecureRound, VectorStep, flat_update
from workers.update_steps import UpdateStep, privacy_steps, run_steps

log = logging.getLogger(__name__)


class FedAvg:
    """Round boundary for one client: `step(num_examples)` after the local epochs."""

    def __init__(self, attached: AttachedModel) -> None:
        if attached.overlap:
            raise FailedPrecondition("federated clients push once per round: attach the model "
                                     "with overlap=False")
        self.attached = attached
        self._global = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.attached.model.named_parameters()}

    def refresh(self) -> None:
        """The model now holds the global parameters (after a pull): remember them."""
        self._global = self._snapshot()

    @property
    def global_params(self) -> dict[str, torch.Tensor]:
        return self._global

    @torch.no_grad()
    def step(self, num_examples: int, steps: Sequence[UpdateStep] = ()) -> list[PushResult]:
        """Push this round's update, after `steps` (clip, noise, ...), and load the new
        global model into the local one."""
        if num_examples <= 0:
            raise ValueError(f"a client reports a positive number of examples, got {num_examples}")
        params = dict(self.attached.model.named_parameters())
        update = run_steps({n: self._global[n] - p.detach() for n, p in params.items()}, steps)
        for name, param in params.items():
            param.grad = update[name]
        results = self.attached.step(num_samples=num_examples)
        for param in self.attached.model.parameters():
            param.grad = None
        self.refresh()
        return results


def client_weight(examples: int, weighting: str) -> int:
    """The weight a client reports: its examples, 1 (uniform), or examples capped at N."""
    if weighting == "examples":
        return examples
    if weighting == "uniform":
        return 1
    name, _, cap = weighting.partition(":")
    if name == "capped" and cap.isdigit() and int(cap) > 0:
        return min(examples, int(cap))
    raise ValueError(f"unknown weighting {weighting!r}; use examples, uniform or capped:N")


@dataclass(frozen=True)
class LocalTraining:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.2
    momentum: float = 0.5
    prox_mu: float = 0.0  # FedProx: + mu/2 * ||w - w_global||^2
    resample_to: int = 0  # a client with fewer examples draws (with replacement) up to this
    weighting: str = "examples"
    dropout: float = 0.0  # chance that a sampled client silently skips a round (simulation)
    secure_aggregation: bool = False  # send masked updates (the server must run it too)
    model: str = "mlp"  # the digits model (`workers.models.DIGITS_MODELS`): mlp or logreg


@dataclass
class ClientReport:
    client_id: str
    examples: int
    rounds_trained: int
    rounds_dropped: int
    bytes_pushed: int
    bytes_pulled: int


class FederatedClient:
    """One client with its private data, training the rounds it is sampled for."""

    def __init__(self, attached: AttachedModel, x: torch.Tensor, y: torch.Tensor,
                 training: LocalTraining, seed: int = 0,
                 vector_steps: Sequence[VectorStep] = DEFAULT_STEPS) -> None:
        """`vector_steps`: under secure aggregation, what turns the flat update (after the
        privacy steps the server asks for) into the masked vector
        (`workers.secure_aggregation`: quantise -> mask)."""
        client = getattr(attached, "client", None)  # a stand-in in unit tests has none
        if (client is not None and len(client.connections) > 1
                and client.session.mode is not Mode.FEDERATED):
            raise FailedPrecondition("fedbuff runs on one server: each shard would apply its "
                                     "buffer on its own (sharded rounds: --mode federated)")
        self.attached = attached
        self.fedavg = FedAvg(attached)
        self.x, self.y = x, y
        self.training = training
        self._rng = np.random.default_rng(seed)
        self._coin = random.Random(seed)
        self._noise = fresh_generator()  # distributed DP: unpredictable to the server
        self.rounds_trained = self.rounds_dropped = 0
        self.secure = (SecureRound(attached.client, vector_steps)
                       if training.secure_aggregation else None)

    def run(self, rounds: int, deadline_s: float = 600.0) -> ClientReport:
        """Take part until the global model reached round `rounds`."""
        client = self.attached.client
        stop = time.monotonic() + deadline_s
        next_round = 0
        while time.monotonic() < stop:
            joined = client.join_round(next_round)
            if joined.round >= rounds or joined.finished:
                break
            next_round = joined.round + 1
            if not joined.sampled:
                continue
            if self._coin.random() < self.training.dropout:
                self.rounds_dropped += 1  # a device that went away this round
                continue
            if client.version != joined.round:  # else the last step brought this model
                client.pull(joined.round)
            if client.version != joined.round and client.session.mode is Mode.FEDERATED:
                continue  # the round closed while we were away: wait for the next
            self.fedavg.refresh()
            weight = client_weight(len(self.y), self.training.weighting)
            if self.secure is not None and not self.secure.share_keys(joined.round, weight):
                continue  # the secure round failed before training: wait for the next
            self._train_locally()
            self._report(weight, privacy_steps(joined, self._noise))
            self.rounds_trained += 1
        return ClientReport(client.worker_id, len(self.y), self.rounds_trained,
                            self.rounds_dropped, client.bytes_pushed, client.bytes_pulled)

    def _report(self, weight: int, privacy: Sequence[UpdateStep]) -> None:
        """Push the update (global - local) after the privacy steps (clip, noise), or under
        secure aggregation send it masked: privacy steps, then quantise -> mask."""
        if self.secure is None:
            self.fedavg.step(weight, privacy)
            return
        client = self.attached.client
        assert client.plan is not None
        names = [spec.name for spec in client.plan.shard_layout(0).tensors]
        local = dict(self.attached.model.named_parameters())
        update = run_steps({n: self.fedavg.global_params[n] - p.detach()
                            for n, p in local.items()}, privacy)
        self.secure.send(flat_update(update, names))

    def _epoch_order(self) -> np.ndarray:
        return _epoch_order(len(self.y), self.training, self._rng)

    def _train_locally(self) -> None:
        train_locally(self.attached.model, self.x, self.y, self.training, self._rng,
                      self.fedavg.global_params)


def _epoch_order(n: int, t: LocalTraining, rng: np.random.Generator) -> np.ndarray:
    if t.resample_to > n:  # oversample a small client up to the target
        return rng.choice(n, t.resample_to, replace=True)
    return rng.permutation(n)


def train_locally(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: LocalTraining,
                  rng: np.random.Generator, anchor: dict[str, torch.Tensor]) -> None:
    """`t.epochs` local epochs of SGD on (x, y); FedProx pulls towards `anchor` (the global
    parameters)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum)
    params = dict(model.named_parameters())
    for _ in range(t.epochs):
        order = _epoch_order(len(y), t, rng)
        for start in range(0, len(order), t.batch_size):
            batch = torch.from_numpy(order[start:start + t.batch_size])
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            if t.prox_mu:
                loss = loss + t.prox_mu / 2 * sum(
                    (params[n] - anchor[n]).square().sum() for n in params)
            loss.backward()
            optimizer.step()
    for param in model.parameters():
        param.grad = None
