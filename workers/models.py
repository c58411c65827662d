"""Models the built-in trainer knows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def digits_mlp(hidden: int = 128, seed: int = 0) -> nn.Module:
    """MLP 64-hidden-10 for 8x8 digits, initialised deterministically from `seed`."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    finally:
        torch.random.set_rng_state(generator_state)


def digits_logreg(seed: int = 0) -> nn.Module:
    """Multinomial logistic regression on the 8x8 digits: one linear layer 64 -> 10 (650
    parameters against the MLP's 9,610), initialised deterministically from `seed`."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Linear(64, 10)
    finally:
        torch.random.set_rng_state(generator_state)


DIGITS_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": digits_mlp,
                                                      "logreg": digits_logreg}


def digits_model(name: str, seed: int = 0) -> nn.Module:
    """A federated digits model by name (`--model`): mlp (the default) or logreg."""
    if name not in DIGITS_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(DIGITS_MODELS)}")
    return DIGITS_MODELS[name](seed=seed)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    try:
        return float((model(x).argmax(dim=1) == y).float().mean())
    finally:
        model.train()
