"""The bundled digits data set and how it is placed on workers.

scikit-learn ships the 8x8 digits (1,797 images, 10 classes), so the demo trains a real
model without downloading anything. Two placements: each worker trains on its own
disjoint shard (`split`), or every worker sees all the data in its own shuffled order
(`replicate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PLACEMENTS = ("split", "replicate")
TEST_FRACTION = 0.25
SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor  # (N, 64) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_dataset() -> Dataset:
    """Digits with a fixed, stratified held-out test split (the same in every process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION,
                                              random_state=SPLIT_SEED, stratify=y)
    return Dataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr),
                   torch.from_numpy(x_te), torch.from_numpy(y_te))


def shard_indices(n: int, rank: int, world: int, placement: str) -> np.ndarray:
    """The training-set indices worker `rank` of `world` trains on."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown data placement {placement!r}; choose from {PLACEMENTS}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    if placement == "replicate":
        return np.arange(n)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)  # same on every worker
    return np.sort(order[rank::world])


def steps_per_epoch(n: int, world: int, placement: str, batch_size: int) -> int:
    """Steps every worker takes per epoch: the same on all of them, as sync mode needs."""
    smallest = n if placement == "replicate" else n // world
    return max(1, math.ceil(smallest / batch_size))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The shuffling seed of `epoch` on worker `rank`: a step redone after a server restart
    trains on the same batch, and the CTR baseline replays rank 0's order."""
    return seed * 1_000_003 + epoch * 1_009 + rank


def epoch_batches(indices: np.ndarray, steps: int, batch_size: int,
                  seed: int) -> list[np.ndarray]:
    """`steps` batches of this worker's shard in a fresh order drawn from `seed`."""
    order = np.random.default_rng(seed).permutation(indices)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def client_shard(data: Dataset, spec: str, clients: int, index: int,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Client `index`'s private training data under partition `spec` (federated)."""
    from paramserver.federated.partition import partition

    if not 0 <= index < clients:
        raise ValueError(f"client index {index} outside [0, {clients})")
    mine = partition(spec, data.y_train.numpy(), clients, seed)[index]
    picked = torch.from_numpy(mine)
    return data.x_train[picked], data.y_train[picked]
