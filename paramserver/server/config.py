"""Everything a server is started with."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from paramserver.codecs import Codec, CodecLimits
from paramserver.federated.config import FederatedConfig
from paramserver.federated.privacy import DPConfig
from paramserver.optimizer import OptimizerConfig
from paramserver.server.limits import ServerLimits
from paramserver.transport import DEFAULT_CHUNK_BYTES, SERVER_WINDOW, check_window
from paramserver.types import Aggregation, Mode


class AsyncLearningRate(enum.Enum):
    """How an async server scales its learning rate for each applied push.

    Each async push is one worker's gradient, applied at once, so W workers apply W updates
    in the time a sync job applies one mean of W gradients. At the full rate every stale
    gradient lands at full strength, and accuracy at the end of a run becomes a coin toss.
    """

    WORKERS = "workers"  # lr / max(W, staleness + 1), W = --workers or the live workers,
    # if more: the sync job's per-sample rate, and weaker for a straggler's stale gradient
    STALENESS = "staleness"  # lr / max(1, staleness): staleness-aware (Zhang et al. 2016)
    CONSTANT = "constant"  # lr for every push, however stale (before issue #19)


class UnusedGradients(enum.Enum):
    """Sync: how a tensor's mean treats the workers of a step that pushed no gradient for it
    (the parameter was unused in their forward)."""

    ZERO = "zero"  # as a zero gradient: the mean is over all the step's pushes, like DDP
    SKIP = "skip"  # not at all: the mean is over the workers that pushed it (before #18)


@dataclass(frozen=True)
class ServerConfig:
    mode: Mode = Mode.SYNC
    expected_workers: int = 1  # sync mode: the workers that form the job
    aggregation: Aggregation = Aggregation.MEAN
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    codecs: CodecLimits = field(default_factory=CodecLimits)  # negotiation allow-list, limits
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_wait_s: float = 300.0  # upper bound on any long poll, whatever the client's deadline
    lease_s: float = 10.0  # a worker silent this long is evicted; 0 never evicts
    sync_quorum: int = 0  # sync: close a step after this many pushes (0: every live worker)
    staleness: int = 0  # ssp: the bound S
    max_staleness: int | None = None  # async: refuse gradients staler than this
    async_lr: AsyncLearningRate = AsyncLearningRate.WORKERS  # async: rate per push
    unused_gradients: UnusedGradients = UnusedGradients.ZERO  # sync: see UnusedGradients
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # steps between checkpoints (0: only on shutdown)
    checkpoint_key: Path | None = None  # a file whose bytes key the checkpoints' HMAC
    reform_timeout_s: float = 60.0  # after a restart: wait this long for the old members
    federated: FederatedConfig = field(default_factory=FederatedConfig)  # federated modes
    limits: ServerLimits = field(default_factory=ServerLimits)  # what a request may cost
    dp: DPConfig = field(default_factory=DPConfig)  # federated: DP-FedAvg (issue #17)
    recv_window: int = SERVER_WINDOW  # HTTP/2 receive window per stream, bytes (issue #14)
    shm_data_plane: bool = False  # accept same-host workers' /dev/shm segments (#14)

    def __post_init__(self) -> None:
        if self.expected_workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.expected_workers}")
        if min(self.lease_s, self.sync_quorum, self.staleness, self.reform_timeout_s) < 0:
            raise ValueError("--lease-timeout, --sync-quorum, --staleness and "
                             "--reform-timeout must be >= 0")
        if (self.checkpoint_every or self.checkpoint_key) and self.checkpoint_dir is None:
            raise ValueError("--checkpoint-every and --checkpoint-key need --checkpoint-dir")
        if self.federated.secure_aggregation and self.mode is not Mode.FEDERATED:
            raise ValueError("--secure-aggregation runs with --mode federated (rounds)")
        check_window(self.recv_window, "--recv-window")
        if self.chunk_bytes < 1024:
            raise ValueError(f"chunk size must be at least 1 KiB, got {self.chunk_bytes}")
        self.dp.check(self.federated.clip_norm, self.aggregation is Aggregation.WEIGHTED,
                      self.mode is Mode.FEDERATED)

    def momentum_correction(self, codec: Codec) -> float:
        """The momentum a worker should keep itself before compressing (DGC's momentum
        correction): the server's SGD momentum, for a biased codec (a sparsifier with error
        feedback, whose delayed, bursty updates server momentum integrates badly: digits
        top-k 1% reached 0.938 vs 0.976). Only where it is exact to move it: plain SGD
        momentum, no weight decay or Nesterov, in the training modes (not federated)."""
        optimizer = self.optimizer
        if (not codec.biased or optimizer.name != "sgd" or optimizer.momentum <= 0
                or optimizer.weight_decay or optimizer.nesterov
                or self.mode in (Mode.FEDERATED, Mode.FEDBUFF)):
            return 0.0
        return optimizer.momentum
