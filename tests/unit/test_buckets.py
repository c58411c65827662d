"""Gradient buckets and the worker identity taken from torchrun's environment."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from workers.buckets import BucketTracker, assign_buckets
from workers.environment import WorkerIdentity

sizes_strategy = st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=40)


@given(sizes=sizes_strategy, bucket=st.integers(min_value=1, max_value=20_000))
def test_every_parameter_lands_in_exactly_one_bucket_in_order(sizes: list[int],
                                                              bucket: int) -> None:
    named = [(f"p{i}", n) for i, n in enumerate(sizes)]
    buckets = assign_buckets(named, bucket)
    assert [n for b in buckets for n in b] == [n for n, _ in named]
    nbytes = dict(named)
    for full in buckets[:-1]:  # every bucket but the last reaches the size, minimally
        assert sum(nbytes[n] for n in full) >= bucket
        assert sum(nbytes[n] for n in full[:-1]) < bucket


def test_tracker_hands_out_a_bucket_once_all_its_gradients_are_ready() -> None:
    tracker = BucketTracker([("a", 4), ("b", 4), ("c", 4), ("d", 4)], bucket_bytes=8)
    assert tracker.buckets == [["d", "c"], ["b", "a"]]  # first step: reverse order
    assert tracker.ready("d") == []
    assert tracker.ready("c") == ["d", "c"]
    assert tracker.ready("a") == []
    assert tracker.remaining() == {"a"}
    assert tracker.ready("a") == [] and tracker.repeated == ["a"]
    tracker.reset()
    # Rebuilt in the order gradients arrived (d, c, a), 'b' (no gradient) last.
    assert tracker.buckets == [["d", "c"], ["a", "b"]]
    assert tracker.repeated == [] and tracker.remaining() == set()


def test_identity_from_torchrun_environment() -> None:
    identity = WorkerIdentity.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (identity.worker_id, identity.rank, identity.world_size, identity.local_rank) == (
        "rank-3", 3, 4, 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert identity.device().type == expected
    alone = WorkerIdentity.from_env({})
    assert alone.rank == 0 and alone.world_size == 1 and alone.worker_id
    with pytest.raises(ValueError, match="outside"):
        WorkerIdentity.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="integers"):
        WorkerIdentity.from_env({"RANK": "x"})
