"""Row-sparse tables end to end (issue #16): `workers.attach` on a model with an
EmbeddingBag(sparse=True) against real servers on 127.0.0.1.

Sync with two workers must equal one process training on both halves of each batch (plain
SGD, the mean of the two gradients); async must apply every push; a 100-million-row table
on two shards must cost memory for the touched rows only."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import torch
from torch import nn

from paramserver import serde
from paramserver.cli.status import format_status, status_record
from paramserver.optimizer import OptimizerConfig
from paramserver.server.app import start_server
from paramserver.server.config import ServerConfig
from paramserver.tables import TableSpec, initial_rows
from paramserver.types import Mode
from tests.conftest import ServerFactory
from workers import ParameterClient, attach

ROWS, DIM = 50, 4
SGD = OptimizerConfig(name="sgd", lr=0.1, momentum=0.0)


class Tiny(nn.Module):
    def __init__(self, rows: int = ROWS, dim: int = DIM, device: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(rows, dim, mode="sum", sparse=True, device=device)
        self.head = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids, offsets)).squeeze(-1)


def _batches(steps: int, workers: int, bags: int = 6, rows: int = ROWS,
             seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Per step, per worker: (ids, offsets, targets) of `bags` bags of 1 to 4 ids."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = []
        for _ in range(workers):
            lengths = torch.randint(1, 5, (bags,), generator=gen)
            ids = torch.randint(0, rows, (int(lengths.sum()),), generator=gen)
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
            step.append((ids, offsets, torch.randn(bags, generator=gen)))
        out.append(step)
    return out


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
          ) -> torch.Tensor:
    ids, offsets, target = batch
    return nn.functional.mse_loss(model(ids, offsets), target)


def _run_worker(address: str, name: str, model: Tiny, batches: list, results: dict,
                prefetch: bool = False) -> None:
    me = int(name[-1])
    with attach(model, address, worker_id=name, world_size=2, retry_s=5, timeout_s=20,
                table_optimizer="sgd:lr=0.1") as ps:
        assert "emb.weight" not in ps.client.plan.layout.by_name()  # not a dense tensor
        for index, step in enumerate(batches):
            model.zero_grad()
            _loss(model, step[me]).backward()
            if prefetch and index + 1 < len(batches):  # overlaps with this step's push
                ps.prefetch({"emb": batches[index + 1][me][0]})
            ps.step()
        assert ps.tables is not None
        if prefetch:
            assert ps.tables.embeddings["emb"].prefetch_hits == len(batches) - 1
        results[name] = (ps.tables.client.pull("emb", np.arange(ROWS), wait=True),
                         {n: p.detach().clone() for n, p in model.head.named_parameters()})


def _two_workers(address: str, batches: list, prefetch: bool = False) -> dict:
    results: dict = {}
    models = [Tiny(), Tiny()]  # here, not in the threads: they seed the global generator
    threads = [threading.Thread(target=_run_worker,
                                args=(address, f"w{i}", models[i], batches, results, prefetch))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(results) == {"w0", "w1"}, "a worker failed; see its thread's traceback"
    return results


@pytest.mark.parametrize("prefetch, shards", [(False, 1), (True, 1), (True, 2)])
def test_two_sync_workers_equal_one_process_on_the_whole_batch(
        server_factory: ServerFactory, prefetch: bool, shards: int) -> None:
    servers = [server_factory(mode=Mode.SYNC, expected_workers=2, optimizer=SGD)
               for _ in range(shards)]
    batches = _batches(steps=3, workers=2)
    results = _two_workers(",".join(s.address for s in servers), batches, prefetch)

    reference = Tiny()
    with torch.no_grad():
        reference.emb.weight.copy_(initial_rows(TableSpec("emb", ROWS, DIM), np.arange(ROWS)))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in batches:
        optimizer.zero_grad()
        (sum(_loss(reference, half) for half in step) / 2).backward()
        optimizer.step()
    for rows, head in results.values():
        torch.testing.assert_close(rows, reference.emb.weight.detach(), atol=1e-6, rtol=0)
        for name, value in head.items():
            torch.testing.assert_close(value, dict(reference.head.named_parameters())[name],
                                       atol=1e-6, rtol=0)
    tables = [t for server in servers for t in server.core.status().tables]
    assert [t.version for t in tables] == [3] * shards
    assert 0 < sum(t.materialized_rows for t in tables) <= ROWS


def test_two_async_workers_apply_every_row_push(server_factory: ServerFactory) -> None:
    server = server_factory(mode=Mode.ASYNC, expected_workers=2, optimizer=SGD)
    results = _two_workers(server.address, _batches(steps=3, workers=2, seed=1))
    (table,) = server.core.status().tables
    assert table.version == 6  # 2 workers x 3 steps, each touching rows
    start = initial_rows(TableSpec("emb", ROWS, DIM), np.arange(ROWS))
    assert not torch.equal(results["w0"][0], start)


def test_a_hundred_million_row_table_costs_only_the_touched_rows(
        server_factory: ServerFactory) -> None:
    rows, dim = 100_000_000, 64  # 25.6 GB if it were dense
    servers = [server_factory(mode=Mode.SYNC, expected_workers=1, optimizer=SGD)
               for _ in range(2)]
    rss_before = psutil.Process().memory_info().rss
    model = Tiny(rows, dim, device="meta")  # the worker never allocates the table either
    batches = _batches(steps=4, workers=1, bags=256, rows=rows, seed=2)
    touched: set[int] = set()
    with attach(model, ",".join(s.address for s in servers), worker_id="w0", retry_s=5,
                table_optimizer="adagrad:lr=0.05") as ps:
        for (batch,) in batches:
            model.zero_grad()
            _loss(model, batch).backward()
            ps.step()
            touched.update(batch[0].tolist())
        assert ps.tables is not None and ps.tables.client.rows_pulled < 4 * 1024
    grown = psutil.Process().memory_info().rss - rss_before
    statuses = [t for s in servers for t in s.core.status().tables]
    assert [t.declared_rows for t in statuses] == [rows, rows]
    assert sum(t.materialized_rows for t in statuses) == len(touched)
    assert sum(t.bytes for t in statuses) < 64 * len(touched) * dim * 4 // 10
    assert grown < 2**30, f"RSS grew by {grown / 2**20:.0f} MiB for a 25.6 GB table"
    assert model.emb.weight.device.type == "meta"
    shown = format_status(servers[0].address, servers[0].core.status())
    assert "declared rows" in shown and str(rows) in shown
    record = status_record(servers[1].address, servers[1].core.status())
    assert record["tables"][0]["materialized_rows"] == statuses[1].materialized_rows


@pytest.mark.parametrize("codec, atol", [("fp16", 1e-3), ("bf16", 1e-2)])
def test_rows_travel_under_the_16_bit_pull_codecs(server_factory: ServerFactory, codec: str,
                                                  atol: float) -> None:
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=SGD)
    model = Tiny(device="meta")
    with attach(model, server.address, worker_id="w0", pull_codecs=codec,
                table_init_scale=0.5) as ps:
        assert ps.tables is not None
        rows = ps.tables.client.pull("emb", np.arange(ROWS))
        pulled = ps.client.connections[0].bytes_pulled
    expected = initial_rows(TableSpec("emb", ROWS, DIM, init_scale=0.5), np.arange(ROWS))
    torch.testing.assert_close(rows, expected, atol=atol, rtol=0)
    assert pulled > 0


def test_a_restarted_shard_restores_its_rows_and_the_worker_goes_on(tmp_path: Path) -> None:
    """Async, Adam rows: the shard's final checkpoint on stop holds rows and moments; a
    server started on the same port from it holds the same table state, and the worker's
    next step rejoins it (SessionExpired) instead of failing."""
    config = ServerConfig(mode=Mode.ASYNC, expected_workers=1, optimizer=SGD,
                          checkpoint_dir=tmp_path)
    server = start_server(config, "127.0.0.1", 0)
    restarted = None
    try:
        model = Tiny()
        batches = _batches(steps=4, workers=1, seed=3)
        with attach(model, server.address, worker_id="w0", retry_s=10, timeout_s=10,
                    table_optimizer="adam:lr=0.01") as ps:
            for (batch,) in batches[:2]:
                model.zero_grad()
                _loss(model, batch).backward()
                ps.step()
            saved = server.core.tables.state_hash()
            server.stop(grace_s=0.5)
            restarted = start_server(config, "127.0.0.1", server.port)
            assert restarted.core.tables.state_hash() == saved
            for (batch,) in batches[2:]:
                model.zero_grad()
                _loss(model, batch).backward()
                ps.step()
            assert ps.tables is not None and ps.tables.client.rejoins == 1
        (table,) = restarted.core.status().tables
        assert table.version == 4 and table.optimizer.startswith("adam")
    finally:
        server.stop(grace_s=0.5)
        if restarted is not None:
            restarted.stop(grace_s=0.5)


@pytest.mark.parametrize("codec, min_cosine", [("fp16", 0.9999), ("qsgd:bits=8", 0.95)])
def test_row_gradients_travel_under_an_unbiased_push_codec(
        server_factory: ServerFactory, codec: str, min_cosine: float) -> None:
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=SGD)
    model, reference = Tiny(), Tiny()
    with torch.no_grad():
        reference.emb.weight.copy_(initial_rows(TableSpec("emb", ROWS, DIM), np.arange(ROWS)))
    (batch,) = _batches(steps=1, workers=1, bags=32, seed=4)[0]
    _loss(reference, batch).backward()
    expected = -0.1 * reference.emb.weight.grad.to_dense()
    with attach(model, server.address, worker_id="w0", codecs=codec,
                table_optimizer="sgd:lr=0.1") as ps:
        assert ps.tables is not None and ps.tables.client._row_codec(0) is not None
        _loss(model, batch).backward()
        ps.step()
        moved = ps.tables.client.pull("emb", np.arange(ROWS)) - reference.emb.weight.detach()
    cosine = nn.functional.cosine_similarity(moved.view(-1), expected.view(-1), dim=0)
    assert float(cosine) > min_cosine


@pytest.mark.parametrize("table", [
    {"name": "t", "rows": 0, "dim": 4, "dtype": 1},  # no rows
    {"name": "t", "rows": 10, "dim": 4, "dtype": 3},  # float16 tables
    {"name": "", "rows": 10, "dim": 4, "dtype": 1},  # no name
    {"name": "t", "rows": 10, "dim": 4, "dtype": 1, "optimizer": {"name": "lion"}},
])
def test_an_invalid_declaration_on_the_wire_is_invalid_argument(
        server_factory: ServerFactory, table: dict) -> None:  # type: ignore[type-arg]
    from paramserver.proto import paramserver_pb2 as pb

    server = server_factory(mode=Mode.ASYNC, expected_workers=1)
    with ParameterClient(server.address, "w0") as client:
        request = pb.DeclareTablesRequest(
            session_id=client.connections[0].session_id,
            plan=pb.TablePlan(num_shards=1, sharding="mod", tables=[pb.TableSpec(**table)]))
        call = client.connections[0].channel.unary_unary(serde.method_path("DeclareTables"))
        with pytest.raises(grpc.RpcError) as info:
            call(request.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert server.core.tables.plan is None


def test_a_workers_checkpoint_carries_the_tables(server_factory: ServerFactory) -> None:
    """ps.state_dict() on one job, ps.load_state_dict() on fresh servers: the same rows and
    Adagrad state, and sync steps go on from the loaded table version."""
    first = server_factory(mode=Mode.SYNC, expected_workers=1, optimizer=SGD)
    batches = _batches(steps=3, workers=1, seed=5)
    model = Tiny()
    with attach(model, first.address, worker_id="w0", table_optimizer="adagrad:lr=0.1") as ps:
        for (batch,) in batches[:2]:
            model.zero_grad()
            _loss(model, batch).backward()
            ps.step()
        state = ps.state_dict()
    second = server_factory(mode=Mode.SYNC, expected_workers=1, optimizer=SGD)
    model = Tiny()
    with attach(model, second.address, worker_id="w0", table_optimizer="adagrad:lr=0.1") as ps:
        ps.load_state_dict(state)
        assert second.core.tables.state_hash() == first.core.tables.state_hash()
        model.zero_grad()
        _loss(model, batches[2][0]).backward()
        ps.step()
    (table,) = second.core.status().tables
    assert table.version == 3
