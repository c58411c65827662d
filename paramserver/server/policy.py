"""The interface every update policy (sync with quorum, async, SSP) implements."""

from __future__ import annotations

from typing import Protocol

import torch

from paramserver.codecs import Update
from paramserver.errors import FailedPrecondition
from paramserver.types import PushResult


class UpdatePolicy(Protocol):
    """Decides when pushed gradients become a parameter update."""

    def check_step(self, worker_id: str, step: int) -> None:
        """Raise before any payload is read if a push for `step` cannot be accepted."""

    def submit(self, worker_id: str, step: int, weight: float, updates: dict[str, Update],
               buffers: list[torch.Tensor]) -> PushResult:
        """Take one complete, decoded push. `buffers` are the pooled byte buffers the
        updates may view; the policy gives each back to the pool once done with it."""

    def members_changed(self) -> None:
        """Workers left or were evicted: a step that only waited for them may close now."""

    def wait_turn(self, worker_id: str, timeout_s: float) -> None:
        """Block a worker's pull while it may not run ahead (SSP); others return at once."""

    def waiting_for(self) -> tuple[float, list[str]]:
        """How long the open step has waited, and for which live workers (sync)."""

    def clocks(self) -> dict[str, int]:
        """Pushes completed per worker (SSP's clock); empty where not tracked."""

    def tick(self) -> None:
        """Periodic duty (federated rounds time out here)."""

    def join_round(self, worker_id: str, round_: int, timeout_s: float) -> tuple[int, bool, int]:
        """Federated: (open round >= round_, sampled?, how many sampled)."""

    def pending(self) -> int:
        """Pushes received but not yet applied."""


class PolicyDefaults:
    """What a policy does about the optional duties when it has nothing to do for them."""

    def members_changed(self) -> None:
        return None

    def wait_turn(self, worker_id: str, timeout_s: float) -> None:
        return None

    def waiting_for(self) -> tuple[float, list[str]]:
        return 0.0, []

    def clocks(self) -> dict[str, int]:
        return {}

    def tick(self) -> None:
        return None

    def join_round(self, worker_id: str, round_: int, timeout_s: float) -> tuple[int, bool, int]:
        raise FailedPrecondition("this server does not run federated rounds (--mode "
                                 "federated or fedbuff)")
