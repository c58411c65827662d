"""Split a data set over simulated clients: IID, label skew (Dirichlet), quantity skew.

`partition("dirichlet:0.5", labels, clients, seed)` returns one index array per client;
every example goes to exactly one client, and every client gets at least `min_size`.
"""

from __future__ import annotations

import numpy as np

MIN_SIZE = 2


def partition(spec: str, labels: np.ndarray, clients: int, seed: int = 0,
              min_size: int = MIN_SIZE) -> list[np.ndarray]:
    """'iid', 'dirichlet:ALPHA' (label skew) or 'quantity:ALPHA' (sizes ~ Dirichlet(ALPHA))."""
    name, _, arg = spec.partition(":")
    if clients < 1 or clients * min_size > len(labels):
        raise ValueError(f"cannot give {clients} clients {min_size}+ of {len(labels)} examples")
    rng = np.random.default_rng(seed)
    if name == "iid":
        parts = np.array_split(rng.permutation(len(labels)), clients)
    elif name == "dirichlet":
        parts = _label_skew(labels, clients, _alpha(arg), rng, min_size)
    elif name == "quantity":
        parts = _quantity_skew(len(labels), clients, _alpha(arg), rng, min_size)
    else:
        raise ValueError(f"unknown partition {spec!r}; use iid, dirichlet:ALPHA or "
                         "quantity:ALPHA")
    return [np.sort(p) for p in parts]


def _alpha(text: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        raise ValueError(f"partition needs a positive number after ':', got {text!r}") from None
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return alpha


def _label_skew(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator,
                min_size: int) -> list[np.ndarray]:
    """Each class is split over clients in Dirichlet(alpha) proportions (Hsu et al. 2019);
    redrawn until every client has `min_size` examples."""
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, piece in enumerate(np.split(members, cuts)):
                parts[client] += piece.tolist()
        if min(len(p) for p in parts) >= min_size:
            return [np.array(p, dtype=np.int64) for p in parts]
    raise ValueError(f"Dirichlet({alpha}) left a client with fewer than {min_size} examples "
                     "in 1000 draws; use a larger alpha or fewer clients")


def _quantity_skew(n: int, clients: int, alpha: float, rng: np.random.Generator,
                   min_size: int) -> list[np.ndarray]:
    """Client sizes drawn from Dirichlet(alpha) over the examples, at least `min_size` each."""
    shares = rng.dirichlet(np.full(clients, alpha))
    sizes = min_size + np.floor(shares * (n - clients * min_size)).astype(int)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
