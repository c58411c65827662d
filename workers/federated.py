"""Federated averaging on the parameter servers: the `torch.nn.FedAvg` the source document
calls, which does not exist in PyTorch, made real.

A client trains locally with its own optimizer for a round, then pushes its model update
(global - local parameters) as the gradient, weighted by its number of examples. A sync
server started with `--aggregate weighted --optimizer sgd --lr 1 --momentum 0` applies
global -= weighted mean(global - local), i.e. global = sum(n_k * local_k) / sum(n_k):
FedAvg (McMahan et al. 2017), with the connection's negotiated codec on the update.
"""

from __future__ import annotations

import torch

from paramserver.errors import FailedPrecondition
from paramserver.types import PushResult
from workers.attach import AttachedModel


class FedAvg:
    """Round boundary for one client: `step(num_examples)` after the local epochs."""

    def __init__(self, attached: AttachedModel) -> None:
        if attached.overlap:
            raise FailedPrecondition("federated clients push once per round: attach the model "
                                     "with overlap=False")
        self.attached = attached
        self.rounds = 0
        self._global = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.attached.model.named_parameters()}

    @torch.no_grad()
    def step(self, num_examples: int) -> list[PushResult]:
        """Push this round's update and load the new global model into the local one."""
        if num_examples <= 0:
            raise ValueError(f"a client reports a positive number of examples, got {num_examples}")
        for name, param in self.attached.model.named_parameters():
            param.grad = self._global[name] - param.detach()
        results = self.attached.step(num_samples=num_examples)
        for param in self.attached.model.parameters():
            param.grad = None
        self._global = self._snapshot()
        self.rounds += 1
        return results
