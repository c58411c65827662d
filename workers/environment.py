"""Worker identity and device from the launcher's environment (torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK), so the same script runs under torchrun or by hand."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerIdentity:
        """RANK/WORLD_SIZE/LOCAL_RANK when set (torchrun), else a single worker named after
        the host and process."""
        env = os.environ if env is None else env
        if "RANK" not in env:
            return cls(f"{socket.gethostname()}-{os.getpid()}", 0, 1, 0)
        try:
            rank = int(env["RANK"])
            world = int(env.get("WORLD_SIZE", "1"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
        return cls(f"rank-{rank}", rank, world, local)

    def device(self) -> torch.device:
        """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def claim_wait_s(retry_s: float, env: Mapping[str, str] | None = None) -> float:
    """How long a first attach waits for a live session that holds its worker id to end:
    `retry_s` under torchrun's elastic agent (TORCHELASTIC_RUN_ID set), 0 elsewhere.

    torchrun (`--max-restarts`) restarts every local worker of a node after one fails, and
    the other nodes' workers after a new rendezvous; it stops the old processes first, so
    within one run a RANK has one live process. A restarted rank then meets the session of
    its dead predecessor, which the servers end once its lease runs out (--lease-timeout,
    the old process no longer heartbeats): waiting for that is bounded by the lease. Two
    live processes with one RANK (a real duplicate) keep their lease alive, and the attach
    still fails, after the wait. Outside torchrun a duplicate is refused at once."""
    env = os.environ if env is None else env
    return retry_s if "TORCHELASTIC_RUN_ID" in env else 0.0
