"""The synthetic CTR data set (issue #16): deterministic, power-law, within range, known AUC,
and cheap whatever the tables' declared size."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from workers.ctr_data import (
    BLOCK,
    SPECS,
    TEST,
    TRAIN,
    CtrSpec,
    examples,
    load_ctr_dataset,
    permute,
    truth,
    zipf_ranks,
)

TINY = dataclasses.replace(SPECS["tiny"], train_examples=4_000, test_examples=4_000)


def test_the_same_seed_gives_the_same_examples_and_another_seed_others() -> None:
    a, b = examples(TINY, TRAIN, 0, 1000), examples(TINY, TRAIN, 0, 1000)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.dense, b.dense)
    other = examples(dataclasses.replace(TINY, seed=1), TRAIN, 0, 1000)
    assert not np.array_equal(a.ids, other.ids)
    test = examples(TINY, TEST, 0, 1000)
    assert not np.array_equal(a.ids, test.ids)


def test_an_example_is_the_same_whatever_range_asks_for_it() -> None:
    whole = examples(TINY, TRAIN, 0, BLOCK + 300)
    part = examples(TINY, TRAIN, BLOCK - 100, BLOCK + 300)  # spans two blocks
    assert np.array_equal(whole.ids[BLOCK - 100:], part.ids)
    assert np.array_equal(whole.probs[BLOCK - 100:], part.probs)


def test_ids_stay_in_range_and_every_rank_maps_to_its_own_id() -> None:
    batch = examples(SPECS["huge"], TRAIN, 0, 5000)
    for t, rows in enumerate(SPECS["huge"].table_rows):
        assert 0 <= batch.ids[:, t].min() and batch.ids[:, t].max() < rows
    for rows in (1, 2, 7, 1000, 4097):  # a bijection of [0, rows), odd sizes included
        ids = permute(np.arange(rows), rows, np.uint64(42))
        assert sorted(ids.tolist()) == list(range(rows))


def test_ids_follow_a_power_law_with_hot_ids_spread_over_the_id_space() -> None:
    rows = 100_000
    ranks = zipf_ranks(np.random.default_rng(0).random(200_000), rows, 1.2)
    counts = np.bincount(ranks, minlength=rows)
    assert counts[0] > counts[9] > counts[99] > counts[999]  # falls with the rank
    top = np.sort(counts)[::-1]
    assert top[:rows // 100].sum() > 0.5 * len(ranks)  # 1% of the ids: most of the draws
    # The 100 hottest ids land all over [0, rows), not in one range (one shard).
    hot = permute(np.arange(100), rows, np.uint64(3))
    assert len(set((hot * 4 // rows).tolist())) == 4


def test_the_bayes_auc_is_known_and_well_above_chance() -> None:
    data = load_ctr_dataset(TINY)
    assert 0.75 < data.bayes_auc < 1.0
    assert 0.05 < data.train.labels.mean() < 0.95
    assert np.all((data.test.probs > 0) & (data.test.probs < 1))


def test_the_truth_of_a_huge_table_costs_memory_per_id_asked_not_per_row() -> None:
    spec = CtrSpec(table_rows=(100_000_000, 2**40), train_examples=10, test_examples=10)
    tracemalloc.start()
    try:
        batch = examples(spec, TRAIN, 0, 2 * BLOCK)
        vectors = truth(spec, 1, batch.ids[:, 1, :])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vectors.shape == (2 * BLOCK, 1, spec.truth_dim)
    assert batch.ids[:, 1].max() > 100_000_000  # ids really range over the huge table
    assert peak < 32 * 2**20  # examples x tables, not 2**40 rows


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="row"):
        CtrSpec(table_rows=(10, 0))
    with pytest.raises(ValueError, match="zipf"):
        CtrSpec(zipf=0.0)
