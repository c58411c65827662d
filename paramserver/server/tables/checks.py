"""The checks of a row pull or push, each refusing with its status and changing nothing.

In this order (docs/wire.md section 11):
 1. tables were declared on this shard                              [FAILED_PRECONDITION]
 2. the table is known                                                        [NOT_FOUND]
 3. at most MAX_ROWS_PER_CALL ids                                    [RESOURCE_EXHAUSTED]
 4. every id in [0, rows)                                                  [OUT_OF_RANGE]
 5. no id twice                                                        [INVALID_ARGUMENT]
 6. every id belongs to this shard (id % num_shards == shard index)    [INVALID_ARGUMENT]
Pushes then check the gradient rows: they decode under the session's push codec (when
`encoded`), exactly rows x dim float32 values (a wrong row width included), all finite
                                                                       [INVALID_ARGUMENT].
"""

from __future__ import annotations

import numpy as np
import torch

from paramserver.codecs import Codec
from paramserver.codecs.base import to_dense
from paramserver.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from paramserver.serde.tables import MAX_ROWS_PER_CALL
from paramserver.server.push_checks import decode
from paramserver.tables import TablePlan, TableSpec
from paramserver.types import TensorSpec


def known_table(plan: TablePlan | None, name: str) -> TableSpec:
    """Checks 1 and 2."""
    if plan is None:
        raise FailedPrecondition("no tables are declared on this server; call DeclareTables")
    spec = plan.by_name().get(name)
    if spec is None:
        raise NotFound(f"unknown table {name!r}; declared: {sorted(plan.by_name())[:8]}")
    return spec


def check_count(rows: int) -> None:
    """Check 3 (also used on a push header's row count, before any chunk is read)."""
    if rows < 0:
        raise InvalidArgument(f"a negative row count {rows}")
    if rows > MAX_ROWS_PER_CALL:
        raise ResourceExhausted(f"{rows} rows in one call; at most {MAX_ROWS_PER_CALL} "
                                "(split the call)")


def check_ids(spec: TableSpec, ids: np.ndarray, plan: TablePlan, shard: int) -> None:
    """Checks 3 to 6 on an int64 id array."""
    check_count(len(ids))
    if len(ids) == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= spec.rows:
        bad = low if low < 0 else high
        raise OutOfRange(f"row id {bad} outside table {spec.name!r} of {spec.rows} rows")
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument(f"duplicate row ids in a call on table {spec.name!r}: "
                              "deduplicate them (sum their gradients)")
    wrong = ids[ids % plan.num_shards != shard]
    if len(wrong):
        raise InvalidArgument(f"row {int(wrong[0])} of table {spec.name!r} lives on shard "
                              f"{int(wrong[0]) % plan.num_shards}, not on shard {shard} "
                              f"(row r on shard r % {plan.num_shards})")


def gradient_rows(spec: TableSpec, payload: torch.Tensor, rows: int,
                  codec: Codec | None = None) -> torch.Tensor:
    """The pushed gradient rows from their bytes (raw, or one payload of `codec`):
    exactly rows x dim finite float32."""
    if codec is not None and rows:
        update = decode(codec, TensorSpec(spec.name, (rows * spec.dim,), torch.float32),
                        payload)
        payload = to_dense(update, rows * spec.dim, torch.float32).view(torch.uint8)
    expected = rows * spec.row_bytes
    if payload.numel() != expected:
        width = payload.numel() / (4 * rows) if rows else payload.numel()
        raise InvalidArgument(f"gradient rows of table {spec.name!r}: {payload.numel()} bytes "
                              f"for {rows} rows (width {width:g}), expected {rows} x "
                              f"{spec.dim} float32 = {expected} bytes")
    grads = torch.from_numpy(payload.numpy().view(np.float32)).view(rows, spec.dim)
    if not bool(torch.isfinite(grads).all()):
        raise InvalidArgument(f"non-finite gradient rows pushed to table {spec.name!r}")
    return grads
