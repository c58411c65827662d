"""Drive the table service of a ParameterServerCore without a network (issue #16)."""

from __future__ import annotations

import numpy as np
import torch

from paramserver.server.core import ParameterServerCore
from paramserver.tables import (
    DeclareTables,
    RowPullRequest,
    RowPushHeader,
    TableOptimizer,
    TablePlan,
    TableSpec,
)
from paramserver.types import PushResult
from paramserver.wire import Chunk
from tests.helpers import chunks


def spec(name: str = "emb", rows: int = 1000, dim: int = 4, optimizer: str = "sgd",
         **kw: float) -> TableSpec:
    return TableSpec(name, rows, dim, optimizer=TableOptimizer(optimizer, **kw))


def declare(core: ParameterServerCore, session: str, *specs: TableSpec, shards: int = 1,
            shard: int = 0) -> bool:
    created, _ = core.tables.declare(DeclareTables(session, TablePlan(shards, specs), shard))
    return created


def pull(core: ParameterServerCore, session: str, table: str, ids: list[int] | np.ndarray,
         min_version: int = 0, timeout_s: float = 1.0) -> torch.Tensor:
    """The rows as float32 (len(ids), dim), decoded from the encoded answer."""
    from paramserver.serde.tables import decode_row_pull_response

    messages = [decode_row_pull_response(m) for m in core.tables.pull(
        RowPullRequest(session, table, np.asarray(ids, dtype=np.int64), min_version),
        timeout_s)]
    header, body = messages[0], messages[1:]
    data = b"".join(bytes(c.data) for c in body if isinstance(c, Chunk))
    values = torch.frombuffer(bytearray(data), dtype=header.dtype) if data else torch.empty(
        0, dtype=header.dtype)
    return values.float().reshape(header.rows, header.dim)


def push_stream(session: str, table: str, step: int, ids: list[int] | np.ndarray,
                grads: torch.Tensor, sequence: int = 0, incarnation: int = 0,
                rows: int | None = None) -> list[object]:
    ids = np.asarray(ids, dtype=np.int64)
    header = RowPushHeader(session, table, step, len(ids) if rows is None else rows,
                           incarnation, sequence)
    if len(ids) == 0:  # an empty push: the header alone
        return [header]
    return [header, *chunks([torch.from_numpy(ids), grads.float()])]


def push(core: ParameterServerCore, session: str, table: str, step: int,
         ids: list[int] | np.ndarray, grads: torch.Tensor, **kw: int) -> PushResult:
    return core.tables.push(iter(push_stream(session, table, step, ids, grads, **kw)))
