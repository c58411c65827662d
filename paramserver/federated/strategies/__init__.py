"""Aggregation strategies, one module each; a module defines STRATEGY and is found by name.

A strategy says how the server combines the round's updates (the aggregation and the server
optimizer applied to their mean, the "pseudo-gradient" of Reddi et al. 2021) and what the
client adds to its local objective (FedProx's proximal term).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from paramserver.optimizer import OptimizerConfig
from paramserver.types import Aggregation


@dataclass(frozen=True)
class Strategy:
    name: str
    aggregation: Aggregation  # WEIGHTED: by each client's weight; MEAN: uniform
    server_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=1.0, momentum=0.0))
    prox_mu: float = 0.0  # client: + mu/2 * ||w - w_global||^2
    summary: str = ""


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def get(name: str) -> Strategy:
    if name not in names():
        raise ValueError(f"unknown strategy {name!r}; choose from {names()}")
    return importlib.import_module(f"{__name__}.{name}").STRATEGY  # type: ignore[no-any-return]
