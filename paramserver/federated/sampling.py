"""Which clients take part in a round: a reproducible sample of the live ones."""

from __future__ import annotations

import math
import random


def sample_clients(clients: set[str], fraction: float, min_clients: int, seed: int,
                   round_: int) -> frozenset[str]:
    """ceil(fraction * n) clients (at least min_clients, at most n), the same for the same
    (seed, round, clients) on every run and on every server shard."""
    ordered = sorted(clients)
    count = min(len(ordered), max(min_clients, math.ceil(fraction * len(ordered))))
    return frozenset(random.Random(f"{seed}:{round_}").sample(ordered, count))
