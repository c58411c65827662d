"""Server-side optimizers applied to the aggregated gradient.

We reuse torch.optim rather than re-deriving the update rules, so a parameter server step is
the same math as `optimizer.step()` in a single process (the equivalence test relies on it).
SGD runs torch's fused implementation: one pass over parameters, gradients and momentum
(the single-tensor path makes four), which also divides the gradient by the step's total
weight in that pass (`grad_scale`), so a sum of pushes needs no separate divide (issue #14).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose from {OPTIMIZERS}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")

    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        params = list(params)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=(self.beta1, self.beta2),
                                    eps=self.eps, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=self.nesterov,
                               fused=True)

    def warm_up(self) -> None:
        """Build this optimizer on one element and step it once: constructing and stepping a
        torch optimizer imports torch._dynamo and sympy (~800 modules, +73 MB resident)
        the first time, which a server should pay at start-up, not in its first step."""
        param = torch.zeros(1, requires_grad=True)
        param.grad = torch.zeros(1)
        self.build([param]).step()

    def describe(self) -> str:
        if self.name == "adam":
            return (f"adam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), "
                    f"weight_decay={self.weight_decay})")
        return (f"sgd(lr={self.lr}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov})")
