"""Row-sparse tables on the server (issue #16): initialiser, row optimizers against torch's
sparse optimizers, sync and async steps, refusals that change nothing, 1/2/4 shards giving
the same rows, status and checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.tables.rows import RowTable
from paramserver.tables import RowPushHeader, TableSpec, initial_rows
from paramserver.types import CodecSpec, Mode, Role
from tests.helpers import chunks, refused, register_stream
from tests.table_helpers import declare, pull, push, push_stream, spec

INIT = {"w": torch.zeros(3)}


def _core(mode: Mode = Mode.SYNC, workers: int = 2, **kw: object) -> ParameterServerCore:
    return ParameterServerCore(ServerConfig(mode=mode, expected_workers=workers,
                                            optimizer=OptimizerConfig(lr=0.1), **kw))  # type: ignore[arg-type]


def _sessions(core: ParameterServerCore, *workers: str) -> list[str]:
    sessions = [core.handshake(w, Role.WORKER, [], []).session_id for w in workers]
    for session in sessions:
        core.register(iter(register_stream(session, INIT)))
    return sessions


def test_initial_rows_depend_only_on_seed_table_and_id() -> None:
    table = TableSpec("t", 10**8, 8, init_seed=3, init_scale=0.5)
    ids = np.array([0, 7, 99_999_999])
    rows = initial_rows(table, ids)
    assert rows.shape == (3, 8) and rows.dtype == torch.float32
    assert float(rows.abs().max()) <= 0.5 and float(rows.std()) > 0.1
    assert torch.equal(initial_rows(table, ids[::-1]), rows.flip(0))  # order-free
    assert torch.equal(initial_rows(table, ids[1:2])[0], rows[1])
    assert not torch.equal(initial_rows(TableSpec("u", 10**8, 8, init_seed=3,
                                                  init_scale=0.5), ids), rows)
    assert not torch.equal(initial_rows(TableSpec("t", 10**8, 8, init_seed=4,
                                                  init_scale=0.5), ids), rows)


@pytest.mark.parametrize("name, make", [
    ("sgd", lambda w: torch.optim.SGD([w], lr=0.1)),
    ("adagrad", lambda w: torch.optim.Adagrad([w], lr=0.1, initial_accumulator_value=0.1,
                                              eps=1e-10)),
    ("adam", lambda w: torch.optim.SparseAdam([w], lr=0.01, betas=(0.8, 0.99), eps=1e-8)),
])
def test_row_optimizers_match_torch_sparse_optimizers(name: str, make: object) -> None:
    options = {"sgd": {"lr": 0.1}, "adagrad": {"lr": 0.1, "initial_accumulator": 0.1},
               "adam": {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-8}}[name]
    table_spec = spec(rows=64, dim=5, optimizer=name, **options)
    table = RowTable(table_spec)
    weight = torch.nn.Parameter(initial_rows(table_spec, np.arange(64)))
    optimizer = make(weight)  # type: ignore[operator]
    generator = np.random.default_rng(0)
    for _ in range(6):
        ids = np.unique(generator.integers(0, 64, 12))
        grads = torch.from_numpy(generator.standard_normal((len(ids), 5)).astype(np.float32))
        table.apply(ids, grads)
        weight.grad = torch.sparse_coo_tensor(torch.from_numpy(ids)[None], grads, (64, 5))
        optimizer.step()
    torch.testing.assert_close(table.read(np.arange(64)), weight.detach(), atol=1e-6, rtol=0)
    assert table.count < 64  # untouched rows were never stored


def test_pull_serves_initial_rows_without_storing_them_and_push_materialises() -> None:
    core = _core(Mode.ASYNC, 1)
    (s,) = _sessions(core, "a")
    table_spec = spec(rows=10**9, dim=4, lr=1.0)
    assert declare(core, s, table_spec)
    ids = [5, 10**9 - 1]
    before = pull(core, s, "emb", ids)
    torch.testing.assert_close(before, initial_rows(table_spec, np.array(ids)))
    assert core.status().tables[0].materialized_rows == 0
    result = push(core, s, "emb", 0, [5], torch.ones(1, 4))
    assert result.applied and result.version == 1
    after = pull(core, s, "emb", ids)
    torch.testing.assert_close(after[0], before[0] - 1.0)
    torch.testing.assert_close(after[1], before[1])
    (status,) = core.status().tables
    assert (status.name, status.declared_rows, status.dim, status.materialized_rows,
            status.version) == ("emb", 10**9, 4, 1, 1)
    assert 0 < status.bytes < 10_000


def test_sync_step_applies_the_mean_of_all_workers_rows_once() -> None:
    core = _core(Mode.SYNC, 2)
    a, b = _sessions(core, "a", "b")
    declare(core, a, spec(lr=1.0))
    start = pull(core, a, "emb", [1, 2, 3])
    first = push(core, a, "emb", 0, [1, 2], torch.ones(2, 4))
    assert not first.applied and pull(core, a, "emb", [1]).equal(start[:1])
    second = push(core, b, "emb", 0, [2, 3], 3 * torch.ones(2, 4))
    assert second.applied and second.version == 1
    after = pull(core, a, "emb", [1, 2, 3], min_version=1)
    torch.testing.assert_close(after - start, -torch.tensor([[0.5], [2.0], [1.5]]).expand(3, 4))



@pytest.mark.parametrize("ids, grads, rows, code", [
    ([-1], torch.ones(1, 4), None, grpc.StatusCode.OUT_OF_RANGE),
    ([1000], torch.ones(1, 4), None, grpc.StatusCode.OUT_OF_RANGE),
    ([3, 3], torch.ones(2, 4), None, grpc.StatusCode.INVALID_ARGUMENT),
    ([3], torch.ones(1, 5), None, grpc.StatusCode.INVALID_ARGUMENT),  # too wide
    ([3, 4], torch.ones(2, 3), None, grpc.StatusCode.INVALID_ARGUMENT),  # too narrow
    ([3], torch.full((1, 4), float("nan")), None, grpc.StatusCode.INVALID_ARGUMENT),
    ([3], torch.ones(1, 4), 1 << 30, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_bad_row_pushes_are_refused_and_change_nothing(ids: list[int], grads: torch.Tensor,
                                                        rows: int | None,
                                                        code: grpc.StatusCode) -> None:
    core = _core(Mode.ASYNC, 1)
    (s,) = _sessions(core, "a")
    declare(core, s, spec(rows=1000))
    push(core, s, "emb", 0, [1, 2], torch.ones(2, 4))
    before = core.tables.state_hash()
    refused(code, core.tables.push, iter(push_stream(s, "emb", 1, ids, grads, rows=rows)))
    assert core.tables.state_hash() == before
    assert core.status().tables[0].version == 1


def test_bad_row_pulls_and_unknown_tables_arerefused() -> None:
    core = _core(Mode.ASYNC, 1)
    (s,) = _sessions(core, "a")
    refused(grpc.StatusCode.FAILED_PRECONDITION, pull, core, s, "emb", [1])
    declare(core, s, spec(rows=1000), shards=2, shard=1)
    before = core.tables.state_hash()
    refused(grpc.StatusCode.NOT_FOUND, pull, core, s, "other", [1])
    refused(grpc.StatusCode.NOT_FOUND, push, core, s, "other", 0, [1], torch.ones(1, 4))
    refused(grpc.StatusCode.OUT_OF_RANGE, pull, core, s, "emb", [1, 1001])
    refused(grpc.StatusCode.OUT_OF_RANGE, pull, core, s, "emb", [-3])
    refused(grpc.StatusCode.INVALID_ARGUMENT, pull, core, s, "emb", [1, 1])
    refused(grpc.StatusCode.INVALID_ARGUMENT, pull, core, s, "emb", [2])  # shard 0's row
    refused(grpc.StatusCode.FAILED_PRECONDITION, push, core, s, "emb", 5, [1],
             torch.ones(1, 4))  # a step from the future
    refused(grpc.StatusCode.DEADLINE_EXCEEDED, pull, core, s, "emb", [1], 3, 0.05)
    refused(grpc.StatusCode.FAILED_PRECONDITION,
             lambda: declare(core, s, spec(rows=999), shards=2, shard=1))  # another plan
    assert core.tables.state_hash() == before


def test_a_retried_row_push_is_answered_not_applied_twice() -> None:
    core = _core(Mode.ASYNC, 1)
    (s,) = _sessions(core, "a")
    declare(core, s, spec(lr=1.0))
    incarnation = core.members.require_worker(s).incarnation
    first = push(core, s, "emb", 0, [4], torch.ones(1, 4), sequence=1, incarnation=incarnation)
    again = push(core, s, "emb", 0, [4], torch.ones(1, 4), sequence=1, incarnation=incarnation)
    assert again.duplicate and again.version == first.version == 1


def _train(shards: int, steps: int = 4) -> torch.Tensor:
    """Two sync workers, adam, the same data: every row of the table afterwards."""
    cores = [_core(Mode.SYNC, 2) for _ in range(shards)]
    sessions = [_sessions(core, "a", "b") for core in cores]
    table_spec = spec(rows=40, dim=3, optimizer="adam", lr=0.05)
    for shard, (core, (a, _)) in enumerate(zip(cores, sessions)):
        declare(core, a, table_spec, shards=shards, shard=shard)
    generator = np.random.default_rng(1)
    for step in range(steps):
        for worker in range(2):
            ids = np.unique(generator.integers(0, 40, 15))
            grads = torch.from_numpy(generator.standard_normal((len(ids), 3)).astype(np.float32))
            for shard, core in enumerate(cores):
                mine = ids % shards == shard
                push(core, sessions[shard][worker], "emb", step, ids[mine],
                     grads[torch.from_numpy(mine)])
    rows = torch.empty(40, 3)
    for shard, core in enumerate(cores):
        ids = np.arange(shard, 40, shards)
        rows[torch.from_numpy(ids)] = pull(core, sessions[shard][0], "emb", ids, steps)
    return rows


def test_one_two_and_four_shards_give_the_same_rows() -> None:
    one = _train(1)
    assert not torch.equal(one, initial_rows(spec(rows=40, dim=3), np.arange(40)))
    torch.testing.assert_close(_train(2), one, atol=1e-6, rtol=0)
    torch.testing.assert_close(_train(4), one, atol=1e-6, rtol=0)


def test_checkpoint_restores_rows_and_optimizer_state(tmp_path: Path) -> None:
    def restart() -> tuple[ParameterServerCore, str]:
        core = _core(Mode.ASYNC, 1, checkpoint_dir=tmp_path)
        return core, _sessions(core, "a")[0]

    core, s = restart()
    declare(core, s, spec(optimizer="adagrad", lr=0.5))
    for step in range(3):
        push(core, s, "emb", step, [1, 7, step + 10], torch.full((3, 4), float(step + 1)))
    assert core.checkpoint() is not None
    saved_hash, saved_status = core.tables.state_hash(), core.status().tables
    restored, s2 = restart()
    assert restored.tables.state_hash() == saved_hash
    assert [dataclasses.replace(t, bytes=0) for t in restored.status().tables] == [
        dataclasses.replace(t, bytes=0) for t in saved_status]  # capacity may differ
    for target in (core, restored):  # the same next step on both: optimizer state came back
        push(target, s if target is core else s2, "emb", 3, [1, 99], torch.ones(2, 4))
    assert restored.tables.state_hash() == core.tables.state_hash()


def test_encoded_row_pushes_decode_under_the_session_codec_or_arerefused() -> None:
    core = _core(Mode.ASYNC, 2)
    raw_session = core.handshake("raw", Role.WORKER, [], []).session_id
    fp16_session = core.handshake("half", Role.WORKER, [CodecSpec.parse("fp16")],
                                  []).session_id
    for session in (raw_session, fp16_session):
        core.register(iter(register_stream(session, INIT)))
    declare(core, raw_session, spec(lr=1.0))
    before = core.tables.state_hash()
    ids = torch.tensor([3, 4])
    garbage = [RowPushHeader(fp16_session, "emb", 0, 2, encoded=True),
               *chunks([ids, torch.zeros(3, dtype=torch.uint8)])]  # 3 bytes, not 2 x 4 halves
    refused(grpc.StatusCode.INVALID_ARGUMENT, core.tables.push, iter(garbage))
    not_unbiased = [RowPushHeader(raw_session, "emb", 0, 2, encoded=True),
                    *chunks([ids, torch.ones(8, dtype=torch.float16)])]
    refused(grpc.StatusCode.INVALID_ARGUMENT, core.tables.push, iter(not_unbiased))
    assert core.tables.state_hash() == before
    start = pull(core, raw_session, "emb", [3, 4])
    good = [RowPushHeader(fp16_session, "emb", 0, 2, encoded=True),
            *chunks([ids, torch.full((8,), 0.5, dtype=torch.float16)])]
    assert core.tables.push(iter(good)).applied
    torch.testing.assert_close(pull(core, raw_session, "emb", [3, 4]), start - 0.5)
