"""The DLRM-like CTR model and its single-process baseline (issue #16)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workers.ctr_baseline import BaselineConfig, train_baseline
from workers.ctr_data import SPECS, TRAIN, examples
from workers.ctr_model import auc, batch_tensors, ctr_model


def test_forward_gives_one_logit_per_example_and_sparse_table_gradients() -> None:
    model = ctr_model((50, 300, 7), dim=8, dense_features=2, hidden=16, sparse=True)
    spec = dataclasses.replace(SPECS["tiny"], table_rows=(50, 300, 7), bag_size=3,
                               dense_features=2)
    ids, dense, labels = batch_tensors(examples(spec, TRAIN, 0, 32))
    logits = model(ids, dense)
    assert logits.shape == (32,)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    for table, rows in zip(model.tables, (50, 300, 7)):
        grad = table.weight.grad
        assert grad is not None and grad.is_sparse and grad.shape == (rows, 8)
        touched = grad.coalesce().indices()[0]
        assert set(touched.tolist()) <= set(ids.flatten().tolist())
    assert model.top[0].weight.grad is not None and not model.top[0].weight.grad.is_sparse


def test_the_same_seed_gives_the_same_model_and_dense_tables_on_request() -> None:
    a, b = ctr_model((20, 30), seed=3, sparse=False), ctr_model((20, 30), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))
    assert not a.tables[0].sparse and b.tables[0].sparse


def test_a_meta_table_of_a_hundred_million_rows_allocates_nothing() -> None:
    model = ctr_model((100_000_000, 10), dim=64, embedding_device="meta")
    assert model.tables[0].weight.is_meta and model.tables[0].weight.shape == (100_000_000, 64)
    assert not model.top[0].weight.is_meta


def test_the_baseline_learns_the_generating_model() -> None:
    spec = dataclasses.replace(SPECS["tiny"], train_examples=8_000, test_examples=3_000)
    report = train_baseline(BaselineConfig(spec=spec, epochs=2, batch_size=128, dim=8,
                                           hidden=32))
    assert report.auc > 0.62 and report.bayes_auc > report.auc - 0.01
    assert report.examples == 16_000


def test_auc_of_an_untrained_model_is_near_chance() -> None:
    spec = SPECS["tiny"]
    model = ctr_model(spec.table_rows, dim=8, seed=1)
    assert abs(auc(model, examples(spec, TRAIN, 0, 4000)) - 0.5) < 0.1


def test_the_ctr_task_declares_huge_tables_only_when_they_are_row_sparse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import tasks

    monkeypatch.setattr(tasks, "SPARSE_TABLES", False)  # the dense tables of before #16
    with pytest.raises(ValueError, match="sparse"):
        tasks.make_task("ctr", ctr_spec="huge")
    with pytest.raises(ValueError, match="choose from"):
        tasks.make_task("ctr", ctr_spec="enormous")
    monkeypatch.setattr(tasks, "SPARSE_TABLES", True)
    task = tasks.make_task("ctr", ctr_spec="huge")
    huge = task.model.tables[2].weight  # type: ignore[index, union-attr]
    assert huge.is_meta and huge.shape[0] == 100_000_000 and task.metric == "auc"


@pytest.mark.parametrize("role", ["worker", "observer"])
def test_a_model_without_tables_attaches_dense_only(role: str) -> None:
    from paramserver.types import Role
    from workers.models import digits_mlp
    from workers.trainer import _attached

    class Client:  # what _attached reads of a ParameterClient
        def __init__(self) -> None:
            self.connections: list[object] = []
            self.role = Role(role)
            self.excluded: object = None

        def attach(self, model: torch.nn.Module, exclude: object) -> None:
            self.excluded = exclude

    client = Client()
    with _attached(client, digits_mlp(), "adam", 0) as tables:  # type: ignore[arg-type]
        assert tables is None and client.excluded == set()
