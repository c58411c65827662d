"""The interface every update policy (sync, async; SSP and quorum later) implements."""

from __future__ import annotations

from typing import Protocol

import torch

from paramserver.codecs import Update
from paramserver.types import PushResult


class UpdatePolicy(Protocol):
    """Decides when pushed gradients become a parameter update."""

    def check_step(self, worker_id: str, step: int) -> None:
        """Raise before any payload is read if a push for `step` cannot be accepted."""

    def submit(self, worker_id: str, step: int, weight: float, updates: dict[str, Update],
               buffers: list[torch.Tensor]) -> PushResult:
        """Take one complete, decoded push. `buffers` are the pooled byte buffers the
        updates may view; the policy gives each back to the pool once done with it."""

    def pending(self) -> int:
        """Pushes received but not yet applied."""
