"""Models the built-in trainer knows."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def digits_mlp(hidden: int = 128, seed: int = 0) -> nn.Module:
    """MLP 64-hidden-10 for 8x8 digits, initialised deterministically from `seed`.

    Thread-safe (issue #17): the values are drawn from a private generator, never from
    torch's global one. The global generator is one per process: seeding it here, as this
    did before, let simulated clients building their models on several threads at once
    draw from each other's seeded stream, so the client that registered the model
    sometimes held other parameters than the seed's. The draws are the ones
    `torch.manual_seed(seed)` then `nn.Linear(...)` would make, in the same order.
    """
    with torch.device("meta"):  # shapes only: nothing drawn from the global generator
        model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            reset_linear(layer, generator)
    return model


@torch.no_grad()
def reset_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """`nn.Linear.reset_parameters`, drawing from `generator`."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def digits_logreg(seed: int = 0) -> nn.Module:
    """Multinomial logistic regression on the 8x8 digits: one linear layer 64 -> 10 (650
    parameters against the MLP's 9,610), initialised deterministically from `seed`."""
    with torch.device("meta"):  # as digits_mlp: thread-safe, the seeded values
        layer = nn.Linear(64, 10)
    layer.to_empty(device="cpu")
    reset_linear(layer, torch.Generator().manual_seed(seed))
    return layer


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
