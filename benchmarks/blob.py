"""The synthetic model every throughput benchmark moves: float32 tensors of a chosen size."""

from __future__ import annotations

import torch
from torch import nn


def blob_sizes(megabytes: float) -> list[int]:
    """Element counts of Blob's 4 float32 tensors: 1/2, 1/4, 1/8 and the rest of the model."""
    numel = int(megabytes * 1e6 / 4)
    return [numel // 2, numel // 4, numel // 8, numel - numel // 2 - numel // 4 - numel // 8]


class Blob(nn.Module):
    """A model of `megabytes` float32 in 4 tensors (see `blob_sizes`) with fixed gradients."""

    def __init__(self, megabytes: float) -> None:
        super().__init__()
        self.tensors = nn.ParameterList([nn.Parameter(torch.zeros(n))
                                         for n in blob_sizes(megabytes)])
        self.set_gradients()

    def set_gradients(self) -> None:
        generator = torch.Generator().manual_seed(0)
        for p in self.tensors:
            p.grad = torch.randn(p.numel(), generator=generator) * 1e-3
