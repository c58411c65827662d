"""Data placement: split shards are disjoint and cover the data; step counts agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.data import epoch_batches, load_digits_dataset, shard_indices, steps_per_epoch


@given(n=st.integers(1, 2000), world=st.integers(1, 8))
def test_split_shards_partition_the_data(n: int, world: int) -> None:
    shards = [shard_indices(n, r, world, "split") for r in range(world)]
    merged = np.concatenate(shards)
    assert len(merged) == n and len(np.unique(merged)) == n
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_replicate_gives_everything_in_a_worker_specific_order() -> None:
    a = epoch_batches(shard_indices(100, 0, 2, "replicate"), 4, 25, seed=0)
    b = epoch_batches(shard_indices(100, 1, 2, "replicate"), 4, 25, seed=1)
    assert sorted(np.concatenate(a)) == list(range(100)) == sorted(np.concatenate(b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(b))


def test_every_worker_takes_the_same_number_of_steps() -> None:
    n = len(load_digits_dataset().x_train)
    assert n == 1347
    steps = steps_per_epoch(n, 2, "split", 32)
    for rank in range(2):
        batches = epoch_batches(shard_indices(n, rank, 2, "split"), steps, 32, seed=rank)
        assert len(batches) == steps and all(len(b) > 0 for b in batches)
    with pytest.raises(ValueError, match="placement"):
        shard_indices(n, 0, 2, "scatter")
