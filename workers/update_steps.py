"""What a federated client does to its update before it is sent: an ordered list of steps,
each taking and returning the update (tensor name -> the global - local delta).

DP-FedAvg's client side (issue #17) is two steps: `ClipStep` (L2 norm bound C over the whole
update) then `NoiseStep` (distributed DP: this client's share N(0, (z*C)^2 / m) of the noise
on the sum). Secure aggregation adds its own after them (quantise, mask), so that the
pipeline reads clip -> noise -> quantise -> mask. The server says which steps a round needs
(`RoundJoin.dp_clip_norm`, `dp_noise_std`); `privacy_steps` turns that into steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from paramserver.federated.privacy import add_noise_, clip_, fresh_generator
from paramserver.types import RoundJoin

Updates = dict[str, torch.Tensor]


class UpdateStep(Protocol):
    """One stage of the client's update pipeline; may change the tensors in place."""

    def __call__(self, update: Updates) -> Updates: ...


class ClipStep:
    """Scale the update down to L2 norm `clip_norm` (the norm of all tensors together)."""

    def __init__(self, clip_norm: float) -> None:
        if clip_norm <= 0:
            raise ValueError(f"clip norm must be positive, got {clip_norm}")
        self.clip_norm = clip_norm
        self.last_norm = 0.0  # before clipping, for logs and tests

    def __call__(self, update: Updates) -> Updates:
        self.last_norm = clip_(update, self.clip_norm)
        return update


class NoiseStep:
    """Add N(0, std^2) to every element (distributed DP: this client's share)."""

    def __init__(self, std: float, generator: torch.Generator) -> None:
        self.std = std
        self.generator = generator

    def __call__(self, update: Updates) -> Updates:
        add_noise_(update, self.std, self.generator)
        return update


def privacy_steps(joined: RoundJoin, generator: torch.Generator | None = None,
                  ) -> list[UpdateStep]:
    """The DP steps the server asked for this round: clip, then (distributed) noise."""
    steps: list[UpdateStep] = []
    if joined.dp_clip_norm > 0:
        steps.append(ClipStep(joined.dp_clip_norm))
    if joined.dp_noise_std > 0:
        steps.append(NoiseStep(joined.dp_noise_std, generator or fresh_generator()))
    return steps


def run_steps(update: Updates, steps: Sequence[UpdateStep]) -> Updates:
    for step in steps:
        update = step(update)
    return update
