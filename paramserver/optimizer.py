"""Server-side optimizers applied to the aggregated gradient.

We reuse torch.optim rather than re-deriving the update rules, so a parameter server step is
the same math as `optimizer.step()` in a single process (the equivalence test relies on it).
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
                               weight_decay=self.weight_decay, nesterov=self.nesterov)

    def describe(self) -> str:
        if self.name == "adam":
            return (f"adam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), "
                    f"weight_decay={self.weight_decay})")
        return (f"sgd(lr={self.lr}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov})")
