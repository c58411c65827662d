"""Everything a server is started with."""

from __future__ import annotations

from dataclasses import dataclass, field

from paramserver.codecs import CodecLimits
from paramserver.server.optimizer import OptimizerConfig
from paramserver.transport import DEFAULT_CHUNK_BYTES
from paramserver.types import Aggregation, Mode


@dataclass(frozen=True)
class ServerConfig:
    mode: Mode = Mode.SYNC
    expected_workers: int = 1  # sync mode: the workers that form the job
    aggregation: Aggregation = Aggregation.MEAN
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    codecs: CodecLimits = field(default_factory=CodecLimits)  # negotiation allow-list, limits
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_wait_s: float = 300.0  # upper bound on any long poll, whatever the client's deadline

    def __post_init__(self) -> None:
        if self.expected_workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.expected_workers}")
        if self.chunk_bytes < 1024:
            raise ValueError(f"chunk size must be at least 1 KiB, got {self.chunk_bytes}")
