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
