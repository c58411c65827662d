"""SecAgg+'s sparse pairing (Bell et al. 2020): every client masks with, and shares its
secrets among, k ~ 2 log2(n) neighbours instead of all n - 1 others.

Everyone derives the same graph from the round's participants, seed and round: order the
client ids by SHA-256("{seed}:{round}:{id}") (ties by id), place them on a ring, and join
each to the k/2 nearest on either side (a Harary graph on a random ring, k-regular). When
2 ceil(log2 n) >= n - 1 the graph is complete.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable


def degree(n: int) -> int:
    """Neighbours per client among n: n - 1 (complete) or the even 2 ceil(log2 n)."""
    if n <= 1:
        return 0
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def neighbours(clients: Iterable[str], seed: int, round_: int) -> dict[str, frozenset[str]]:
    """Each client's neighbours (symmetric, never itself)."""
    ids = sorted(set(clients))
    n, k = len(ids), degree(len(ids))
    if k == n - 1:
        return {c: frozenset(ids) - {c} for c in ids}
    ring = sorted(ids, key=lambda c: (hashlib.sha256(f"{seed}:{round_}:{c}".encode()).digest(),
                                      c))
    half = k // 2
    return {c: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d)
            for i, c in enumerate(ring)}


def points(clients: Iterable[str]) -> dict[str, int]:
    """Each client's Shamir evaluation point: 1 + its index among the sorted ids."""
    return {c: i + 1 for i, c in enumerate(sorted(set(clients)))}
