"""Differential privacy for federated rounds: DP-FedAvg (McMahan et al. 2018).

Every client's update is clipped to L2 norm C, the server sums the clipped updates of a
round, Gaussian noise of std z*C is added to the sum, and the sum is divided by the number
of *sampled* clients m (a fixed denominator: one client changes the average by at most
C/m, whether it reported or not). The global model only ever sees that noisy average, so
each round is one Gaussian mechanism with noise multiplier z on a sample of the clients.

Two places to add the noise (`--dp`):
- central: the server clips each update (the existing --clip-norm screening) and adds
  N(0, (z*C)^2) per coordinate to the sum. The server sees individual updates: this
  protects the clients from whoever receives the model, not from the server.
- distributed: each sampled client clips its own update and adds its share
  N(0, (z*C)^2 / m) (told by JoinRound); the shares of the m clients add up to the same
  N(0, (z*C)^2) in the sum. Meant to run under secure aggregation, where the server only
  learns the sum. If k of the m clients drop out, the sum holds only k shares: the round is
  accounted with the smaller z*sqrt(k/m).

The accountant (`PrivacyAccountant`) is dp_accounting's RDP accountant over one
Poisson-subsampled Gaussian event per applied round, with q = sampled / live clients. Our
sampling draws a fixed number of clients without replacement; accounting it as Poisson
sampling is the usual approximation of DP-FedAvg (McMahan et al. 2018, TF Privacy), not an
exact bound for fixed-size sampling. Adjacency is adding or removing one client's data.

Uniform weighting is required: with example weights a client's influence would be bounded
by its (data-dependent) weight, not by C. A weighted aggregation is refused.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from paramserver.codecs import SparseUpdate, Update
from paramserver.errors import InvalidArgument

DEFAULT_DELTA = 1e-5


class DPMode(enum.Enum):
    OFF = "off"
    CENTRAL = "central"  # the server adds the noise
    DISTRIBUTED = "distributed"  # each sampled client adds its share


@dataclass(frozen=True)
class DPConfig:
    """What a differentially private federation runs with (the clip norm C is
    `FederatedConfig.clip_norm`)."""

    mode: DPMode = DPMode.OFF
    noise_multiplier: float = 0.0  # z: the noise std on the sum is z * C
    delta: float = DEFAULT_DELTA
    target_epsilon: float = 0.0  # stop before a round would spend more (0: no budget)

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.target_epsilon < 0:
            raise ValueError("--noise-multiplier and --target-epsilon must be >= 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"--dp-delta must be in (0, 1), got {self.delta}")

    @property
    def on(self) -> bool:
        return self.mode is not DPMode.OFF

    def check(self, clip_norm: float, weighted: bool, rounds_mode: bool) -> None:
        """Raise ValueError (naming the flag) unless the server settings give DP-FedAvg's
        guarantee."""
        if not self.on:
            if self.noise_multiplier or self.target_epsilon:
                raise ValueError("--noise-multiplier and --target-epsilon need --dp central "
                                 "or --dp distributed")
            return
        if not rounds_mode:
            raise ValueError("--dp needs --mode federated (FedBuff's buffered updates are "
                             "not accounted)")
        if clip_norm <= 0:
            raise ValueError("--dp needs --clip-norm C > 0: the L2 bound of each client's "
                             "update, which the noise is scaled to")
        if self.noise_multiplier <= 0:
            raise ValueError("--dp needs --noise-multiplier z > 0 (`paramserver federated` "
                             "computes it from --target-epsilon and --rounds)")
        if weighted:
            raise ValueError("--dp needs uniform weighting (--aggregate mean): with example "
                             "weights a client's influence is not bounded by --clip-norm")


# ---- the mechanism: clipping and noise ---------------------------------------------------


def l2_norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors.values()))


def clip_(tensors: dict[str, torch.Tensor], clip_norm: float) -> float:
    """Scale `tensors` in place so that their joint L2 norm is at most `clip_norm`;
    returns the norm before clipping."""
    norm = l2_norm(tensors)
    if norm > clip_norm:
        for tensor in tensors.values():
            tensor.mul_(clip_norm / norm)
    return norm


def add_noise_(tensors: dict[str, torch.Tensor], std: float,
               generator: torch.Generator) -> None:
    """Add N(0, std^2) to every element, in place (in float64 for small std on big
    values, then back to each tensor's dtype)."""
    if std <= 0:
        return
    for tensor in tensors.values():
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
        tensor.copy_(tensor.double() + noise * std)


def fresh_generator(seed: int | None = None) -> torch.Generator:
    """A generator seeded from the OS (or from `seed`, for tests). torch's generator is not
    a cryptographic one: fine for an experiment, not a hardened deployment."""
    generator = torch.Generator()
    generator.manual_seed(secrets.randbits(63) if seed is None else seed)
    return generator


def client_noise_std(noise_multiplier: float, clip_norm: float, sampled: int) -> float:
    """Distributed DP: each of the `sampled` clients' share of the std z*C on the sum."""
    return noise_multiplier * clip_norm / math.sqrt(max(sampled, 1))


# ---- the accountant --------------------------------------------------------------------


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp_accounting logs a warning per RDP order it drops (harmless); keep them out."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _round_event(q: float, z: float):  # type: ignore[no-untyped-def]
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))


@functools.lru_cache(maxsize=256)
def _round_rdp(q: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The RDP orders and curve of one round at (q, z). Computing a subsampled curve takes
    a few hundred ms, and the server accounts under its round lock: each (q, z) is computed
    once. Reads RdpAccountant's `_orders` / `_rdp` (dp_accounting is pinned, 0.6)."""
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    accountant = RdpAccountant()
    with _quiet_absl():
        accountant.compose(_round_event(q, z))
    return np.asarray(accountant._orders), np.asarray(accountant._rdp)


def epsilon_of(rounds: list[tuple[float, float]], delta: float) -> float:
    """Epsilon at `delta` after the rounds, each (sampling rate q, noise multiplier z):
    what dp_accounting's RDP accountant composing one Poisson-subsampled Gaussian per round
    reports (the curves of the rounds add up; `compute_epsilon` converts, as its
    `get_epsilon` does)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if not rounds:
        return 0.0
    counts: dict[tuple[float, float], int] = {}
    for event in rounds:
        counts[event] = counts.get(event, 0) + 1
    curves = {event: _round_rdp(*event) for event in counts}
    orders = next(iter(curves.values()))[0]  # the accountant's default orders, always
    total = np.sum([count * curves[event][1] for event, count in counts.items()], axis=0)
    with _quiet_absl():
        return float(compute_epsilon(orders, total, delta)[0])


def noise_for_epsilon(target_epsilon: float, delta: float, q: float, rounds: int) -> float:
    """The smallest noise multiplier z whose `rounds` rounds at sampling rate q spend at
    most `target_epsilon` (dp_accounting's calibration over the RDP accountant)."""
    import dp_accounting
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    if target_epsilon <= 0 or rounds < 1:
        raise ValueError("a target epsilon > 0 and at least one round are needed")

    def event(z: float):  # type: ignore[no-untyped-def]
        return dp_accounting.SelfComposedDpEvent(_round_event(q, z), rounds)

    with _quiet_absl():
        z = dp_accounting.calibrate_dp_mechanism(RdpAccountant, event, target_epsilon, delta)
    return float(z)


def rounds_within(target_epsilon: float, delta: float, q: float, z: float,
                  limit: int) -> int:
    """How many rounds at (q, z) stay within `target_epsilon` (at most `limit`)."""
    done = 0
    while done < limit and epsilon_of([(q, z)] * (done + 1), delta) <= target_epsilon:
        done += 1
    return done


@dataclass(frozen=True, kw_only=True)
class PrivacyReport:
    """DP figures for `status` and reports."""

    mode: str
    noise_multiplier: float
    clip_norm: float
    delta: float
    epsilon: float  # spent so far, at delta
    rounds: int  # applied rounds accounted
    target_epsilon: float = 0.0
    budget_spent: bool = False  # no further round fits in target_epsilon
    sampling_rate: float = 0.0  # q of the last round


class PrivacyAccountant:
    """The rounds spent so far, and whether one more fits in the budget.

    `ledger` holds (round, q, effective z) per applied round, in order; only `spend`
    appends to it (one tuple at a time, so a checkpoint can copy it while rounds run) and
    only `restore` replaces it (`privacy_ledger`: the ledger is part of a checkpoint)."""

    def __init__(self, config: DPConfig, clip_norm: float) -> None:
        self.config = config
        self.clip_norm = clip_norm
        self.ledger: list[tuple[int, float, float]] = []
        self.epsilon = 0.0
        self.budget_spent = False
        self.spent_at: int | None = None  # the round whose opening found the budget spent
        self._last_q = 0.0

    @property
    def rounds(self) -> list[tuple[float, float]]:
        """(q, effective z) per applied round."""
        return [(q, z) for _, q, z in self.ledger]

    def allows(self, q: float, round_: int = 0) -> bool:
        """Whether one more round (number `round_`) at rate q (nominal z) stays within the
        target; once not, the budget stays spent."""
        if self.budget_spent or not self.config.target_epsilon:
            return not self.budget_spent
        after = epsilon_of([*self.rounds, (q, self.config.noise_multiplier)], self.config.delta)
        self.budget_spent = after > self.config.target_epsilon
        if self.budget_spent:
            self.spent_at = round_
        return not self.budget_spent

    def spend(self, q: float, reported: int, sampled: int, round_: int | None = None) -> float:
        """Account one applied round (number `round_`, default: the next); returns epsilon
        after it."""
        z = self.config.noise_multiplier
        if self.config.mode is DPMode.DISTRIBUTED and sampled:
            z *= math.sqrt(reported / sampled)  # only the reporting clients' shares
        self.ledger.append((len(self.ledger) if round_ is None else round_, q, z))
        self._last_q = q
        self.epsilon = epsilon_of(self.rounds, self.config.delta)
        return self.epsilon

    def restore(self, ledger: list[tuple[int, float, float]], budget_spent: bool,
                spent_at: int | None) -> None:
        """Continue from a checkpoint's ledger (before any round runs)."""
        self.ledger = list(ledger)
        self.budget_spent, self.spent_at = budget_spent, spent_at
        self._last_q = ledger[-1][1] if ledger else 0.0
        self.epsilon = epsilon_of(self.rounds, self.config.delta)

    def report(self) -> PrivacyReport:
        return PrivacyReport(mode=self.config.mode.value,
                             noise_multiplier=self.config.noise_multiplier,
                             clip_norm=self.clip_norm, delta=self.config.delta,
                             epsilon=self.epsilon, rounds=len(self.rounds),
                             target_epsilon=self.config.target_epsilon,
                             budget_spent=self.budget_spent, sampling_rate=self._last_q)


class RoundPrivacy:
    """What a round policy does for DP-FedAvg, in the order it does it: `open` a round
    (False once the budget is spent), `clip_norm_for_screening` of each push, `check` a
    push, `finish` the round's sums (noise, fixed denominator), `report`."""

    def __init__(self, config: DPConfig, clip_norm: float, seed: int | None = None) -> None:
        self.config = config
        self.clip_norm = clip_norm
        self.accountant = PrivacyAccountant(config, clip_norm)
        _round_rdp(1.0, config.noise_multiplier)  # imports dp_accounting before any round
        self._generator = fresh_generator(seed)
        self._q = 0.0
        self._round = 0  # the round `open` last admitted

    @property
    def finished(self) -> bool:
        return self.accountant.budget_spent

    def open(self, sampled: int, live: int, round_: int = 0) -> bool:
        """Round `round_` samples `sampled` of `live` clients: may it run within the
        budget?"""
        self._q, self._round = (sampled / live if live else 0.0), round_
        return self.accountant.allows(self._q, round_)

    @property
    def clip_norm_for_screening(self) -> float:
        """The server clips in central mode; in distributed mode the update already holds
        its noise share (clipping it again would scale the noise), and under secure
        aggregation the server could not see it anyway."""
        return self.clip_norm if self.config.mode is DPMode.CENTRAL else 0.0

    def client_noise_std(self, sampled: int) -> float:
        """Told to each sampled client by JoinRound (distributed mode only)."""
        if self.config.mode is not DPMode.DISTRIBUTED:
            return 0.0
        return client_noise_std(self.config.noise_multiplier, self.clip_norm, sampled)

    def check(self, updates: dict[str, Update], model: set[str],
              momentum_applied: bool) -> None:
        """Refuse (InvalidArgument) a push DP cannot take: one that leaves model tensors out
        (every tensor must get the noise), carries a worker-side momentum, or, in
        distributed mode, is sparse (a sparsifier would send a sliver of the client's noise
        share and hold the rest back in its residual: the sum would lack its noise)."""
        names = set(updates)
        if self.config.mode is DPMode.DISTRIBUTED and any(
                isinstance(u, SparseUpdate) for u in updates.values()):
            raise InvalidArgument("--dp distributed needs dense updates: a sparsifying codec "
                                  "(topk, randomk) drops most of the client's noise share")
        if momentum_applied:
            raise InvalidArgument("a push with momentum applied on the worker cannot join a "
                             "differentially private round")
        if names != model:
            raise InvalidArgument(f"a differentially private round needs an update for every "
                             f"tensor of the model; missing {sorted(model - names)[:5]}")

    def finish(self, sums: dict[str, torch.Tensor], sampled: int,
               reported: int) -> dict[str, float]:
        """Add the central noise to the sums in place and account the round; returns the
        divisor of every sum: the number of sampled clients."""
        if self.config.mode is DPMode.CENTRAL:
            add_noise_(sums, self.config.noise_multiplier * self.clip_norm, self._generator)
        self.accountant.spend(self._q, reported, sampled, self._round)
        return {name: float(sampled) for name in sums}

    def report(self) -> PrivacyReport:
        return self.accountant.report()
