"""Rows pulled under a qsgd pull codec, end to end (issue #16): `workers.attach` with
`pull_codecs="qsgd:bits=8"` gets every row within the stated bound, in fewer bytes, and a tiny
EmbeddingBag model trains to nearly the same rows and head as without a codec."""

from __future__ import annotations

import numpy as np
import torch

from paramserver.tables import TableSpec, initial_rows
from paramserver.tables.row_codec import error_bound
from paramserver.types import Mode
from tests.conftest import ServerFactory
from tests.integration.test_tables import ROWS, SGD, Tiny, _batches, _loss
from workers import attach


def _pull_all(server_factory: ServerFactory, codec: str) -> tuple[torch.Tensor, int]:
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=SGD)
    with attach(Tiny(device="meta"), server.address, worker_id="w0", pull_codecs=codec,
                table_init_scale=0.5) as ps:
        assert ps.tables is not None
        before = ps.client.connections[0].bytes_pulled
        rows = ps.tables.client.pull("emb", np.arange(ROWS))
        return rows, ps.client.connections[0].bytes_pulled - before


def test_rows_pulled_under_qsgd_are_within_the_bound_in_fewer_bytes(
        server_factory: ServerFactory) -> None:
    stored = initial_rows(TableSpec("emb", ROWS, 4, init_scale=0.5), np.arange(ROWS))
    rows, qsgd_bytes = _pull_all(server_factory, "qsgd:bits=8")
    raw, raw_bytes = _pull_all(server_factory, "none")
    assert torch.equal(raw, stored)
    assert bool(((rows - stored).abs().amax(dim=1) <= error_bound(stored, 8)).all())
    assert not torch.equal(rows, stored)  # quantised, not raw
    # 4 + 4 bytes a row against 16: the values shrink by half
    assert qsgd_bytes < raw_bytes - ROWS * 8 + 64


def _train(server_factory: ServerFactory, codec: str) -> tuple[torch.Tensor, torch.Tensor]:
    server = server_factory(mode=Mode.ASYNC, expected_workers=1, optimizer=SGD)
    model = Tiny()
    with attach(model, server.address, worker_id="w0", pull_codecs=codec, timeout_s=20,
                table_optimizer="sgd:lr=0.1") as ps:
        for (batch,) in _batches(steps=8, workers=1, bags=16, seed=9):
            model.zero_grad()
            _loss(model, batch).backward()
            ps.step()
        assert ps.tables is not None
        rows = ps.tables.client.pull("emb", np.arange(ROWS))
    return rows, model.head.weight.detach().clone()


def test_a_tiny_embedding_bag_model_trains_under_a_qsgd_pull_codec_as_without(
        server_factory: ServerFactory) -> None:
    rows, head = _train(server_factory, "none")
    q_rows, q_head = _train(server_factory, "qsgd:bits=8")
    start = initial_rows(TableSpec("emb", ROWS, 4), np.arange(ROWS))
    moved = (rows - start).norm()
    assert float(moved) > 0.05  # training moved the rows: the comparison means something
    # 8 steps on 8-bit rows (each off by at most max|row| / 127): within 5% of the movement
    assert float((q_rows - rows).norm()) < 0.05 * float(moved)
    torch.testing.assert_close(q_head, head, atol=0.02, rtol=0)
