"""What a federated server is started with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FederatedConfig:
    fraction: float = 1.0  # of the live clients sampled each round
    seed: int = 0  # sampling is reproducible from (seed, round, client ids)
    min_clients: int = 1  # sampled at least, and reports needed for a round to count
    round_timeout_s: float = 60.0  # a round closes then with whoever reported
    min_completion_rate: float = 0.0  # of the sampled clients that must report
    clip_norm: float = 0.0  # scale updates down to this L2 norm (0: off)
    reject_norm: float = 1e6  # refuse updates above this L2 norm (0: off)
    buffer: int = 2  # fedbuff: apply once this many updates arrived
    # Clients client-0 .. client-{population-1} are sampled whether connected or not, and a
    # round waits for every sampled one (simulations that connect a client only when it is
    # sampled); 0: sample the live clients.
    population: int = 0
    # Secure aggregation (issue #17, `paramserver.federated.secagg`): the server sees only
    # masked, quantised updates and learns their sum. Shamir threshold t = ceil(ratio * (k+1))
    # of each client's k neighbours and itself; updates are clipped to +-secagg_clip per
    # element before quantisation.
    secure_aggregation: bool = False
    secagg_threshold: float = 0.6
    secagg_clip: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.min_clients < 1 or self.buffer < 1:
            raise ValueError("--min-clients and --buffer must be at least 1")
        if not 0 <= self.min_completion_rate <= 1:
            raise ValueError(f"--min-completion-rate must be in [0, 1], "
                             f"got {self.min_completion_rate}")
        if self.population < 0:
            raise ValueError(f"--population must be 0 or more, got {self.population}")
        if not 0.5 < self.secagg_threshold <= 1 or self.secagg_clip <= 0:
            raise ValueError("--secagg-threshold must be in (0.5, 1] and --secagg-clip "
                             "positive")
        if self.round_timeout_s <= 0:
            raise ValueError(f"--round-timeout must be positive, got {self.round_timeout_s}")
