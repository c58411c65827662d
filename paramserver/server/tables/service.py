"""Row-sparse embedding tables on one shard (issue #16): declare, pull rows, push rows.

The wire contract is docs/wire.md section 11. A job declares its tables once (the first
declaration records the `TablePlan` on each shard; later ones must match). Each table keeps
its own version on this shard: the number of updates applied to it.

- Sync (`--mode sync`): every worker pushes each table to every shard once per step (an
  empty push when its batch touched no row of that shard), with step = the table's version.
  The step closes once every live worker pushed (the dense step's membership rule): the
  gradient rows of all pushes are summed per row id and divided by the number of pushes
  (the mean, as a dense step averages over workers), and applied in one optimizer step.
- Async (and SSP, whose bound applies to dense pushes only): each push is applied on
  arrival, as one optimizer step.

Row pushes share the push ledger with dense pushes (one sequence per worker incarnation),
so a retried row push is answered, not applied twice. `_lock` guards the plan, the tables
and the open steps; long polls wait on it.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from paramserver import wire
from paramserver.codecs import Codec
from paramserver.errors import Aborted, DeadlineExceeded, FailedPrecondition, InvalidArgument
from paramserver.security.roles import Principal
from paramserver.serde.tables import (
    encode_row_pull_header,
    table_plan_from_bytes,
    table_plan_to_bytes,
)
from paramserver.server.assembly import TensorAssembler, drain_chunks, first_message, skip_chunks
from paramserver.server.config import ServerConfig
from paramserver.server.ledger import PushLedger
from paramserver.server.membership import Membership, SessionRecord
from paramserver.server.tables.checks import check_count, check_ids, gradient_rows, known_table
from paramserver.server.tables.rows import RowTable
from paramserver.tables import (
    DeclareTables,
    RowPullHeader,
    RowPullRequest,
    RowPushHeader,
    TablePlan,
    TableStatus,
)
from paramserver.tables.row_codec import encode_rows
from paramserver.transport import chunk_ranges
from paramserver.types import Mode, PushResult, TensorSpec

_WAIT_SLICE_S = 0.2  # a row pull's wait re-checks its cancellation this often


class TableService:
    """The tables of one shard and their update rule (see the module docstring)."""

    def __init__(self, config: ServerConfig, members: Membership, ledger: PushLedger) -> None:
        self._config = config
        self._members = members
        self._ledger = ledger
        self._lock = threading.Condition()
        self.plan: TablePlan | None = None
        self.shard_index = 0
        self.tables: dict[str, RowTable] = {}
        self._open: dict[str, dict[str, tuple[np.ndarray, torch.Tensor]]] = {}  # sync steps
        self._closed = False
        self._pull_seeds = itertools.count()  # qsgd row pulls' rounding draws

    @property
    def sync(self) -> bool:
        return self._config.mode is Mode.SYNC

    # ---- declare ---------------------------------------------------------------------

    def declare(self, request: DeclareTables, *,
                caller: Principal | None = None) -> tuple[bool, TablePlan]:
        """Record the table plan (True), or check it against the recorded one (False)."""
        self._members.require_worker(request.session_id, caller)
        if self._config.mode in (Mode.FEDERATED, Mode.FEDBUFF):
            raise FailedPrecondition("row-sparse tables train in sync, async or ssp mode, not "
                                     f"{self._config.mode.value}")
        plan = request.plan
        if not 0 <= request.shard_index < plan.num_shards:
            raise InvalidArgument(f"shard index {request.shard_index} outside a plan of "
                                  f"{plan.num_shards} shards")
        with self._lock:
            if self.plan is not None:
                if plan != self.plan or request.shard_index != self.shard_index:
                    raise FailedPrecondition(
                        f"other tables are declared on this server (shard {self.shard_index} "
                        f"of {self.plan.num_shards}: {[t.name for t in self.plan.tables]}): "
                        "declare the same tables, with the servers in the same order")
                return False, self.plan
            self.plan, self.shard_index = plan, request.shard_index
            self.tables = {t.name: RowTable(t) for t in plan.tables}
            self._open = {t.name: {} for t in plan.tables}
            self._lock.notify_all()
            return True, plan

    # ---- pull ------------------------------------------------------------------------

    def pull(self, request: RowPullRequest, timeout_s: float,
             cancelled: threading.Event | None = None, *,
             caller: Principal | None = None) -> Iterator[bytes]:
        """Encoded RowPullResponse messages: a header, then the rows' values in chunks."""
        record = self._members.touch(request.session_id, caller)
        with self._lock:
            assert_plan = self.plan
            spec = known_table(assert_plan, request.table)
            assert assert_plan is not None
            check_ids(spec, request.ids, assert_plan, self.shard_index)
            table = self._wait(request.table, request.min_version, timeout_s, cancelled)
            version, values = table.version, table.read(request.ids)
        # qsgd: a fresh seed per pull, so a row's rounding differs from pull to pull
        seed = (self.shard_index << 48) + next(self._pull_seeds)
        dtype, encoding, payload = encode_rows(values, record.pull_codec, seed)
        return _pull_messages(RowPullHeader(version, spec.name, len(request.ids), spec.dim,
                                            dtype, encoding),
                              memoryview(payload.numpy().data), self._config.chunk_bytes)

    def _wait(self, name: str, min_version: int, timeout_s: float,
              cancelled: threading.Event | None) -> RowTable:
        """The table once its version reaches `min_version` (caller holds `_lock`)."""
        deadline = time.monotonic() + min(timeout_s, self._config.max_wait_s)
        table = self.tables[name]
        while table.version < min_version:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed or (cancelled is not None and cancelled.is_set()):
                raise DeadlineExceeded(f"table {name!r} version {min_version} not reached "
                                       f"(this shard is at version {table.version})")
            self._lock.wait(min(remaining, _WAIT_SLICE_S))
            table = self.tables[name]
        return table

    # ---- push ------------------------------------------------------------------------

    def push(self, stream: Iterator[object], *, caller: Principal | None = None) -> PushResult:
        """Receive one row push: checked whole (see `checks.py`), then applied or held."""
        header = first_message(stream, "row push")
        if not isinstance(header, RowPushHeader):
            raise InvalidArgument("a row push stream must open with a RowPushHeader")
        record = self._members.require_worker(header.session_id, caller)
        if header.sequence and header.incarnation != record.incarnation:
            raise FailedPrecondition(
                f"row push from incarnation {header.incarnation} of worker "
                f"{record.worker_id!r}, whose session is incarnation {record.incarnation}: "
                "handshake again")
        key = (record.worker_id, header.incarnation, header.sequence)
        earlier = self._ledger.begin(*key, timeout_s=self._config.max_wait_s)
        if earlier is not None:
            skip_chunks(stream)
            return earlier
        result = None
        try:
            result = self._receive(header, record, stream)
        finally:
            self._ledger.finish(*key, result)
        return result

    def _receive(self, header: RowPushHeader, record: SessionRecord,
                 stream: Iterator[object]) -> PushResult:
        with self._lock:
            spec = known_table(self.plan, header.table)
            check_count(header.rows)
            self._check_step(header.table, record.worker_id, header.step)
        codec = _row_codec(record, header.encoded)
        values = TensorSpec("rows", (header.rows * spec.dim,), torch.float32)
        assembler = TensorAssembler(
            (TensorSpec("ids", (header.rows,), torch.int64), values),
            limits=(8 * header.rows, codec.max_payload_nbytes(values.numel, torch.float32)
                    if codec else values.nbytes))
        drain_chunks(stream, assembler, "row push")
        ids_bytes, rows_bytes = assembler.finish_payloads()
        if ids_bytes.numel() != 8 * header.rows:
            raise InvalidArgument(f"row push of {header.rows} rows carried "
                                  f"{ids_bytes.numel()} bytes of ids")
        ids = ids_bytes.numpy().view(np.int64)
        with self._lock:
            assert self.plan is not None
            check_ids(spec, ids, self.plan, self.shard_index)
            grads = gradient_rows(spec, rows_bytes, header.rows, codec).clone()
            self._check_step(header.table, record.worker_id, header.step)
            self._members.mark_active(header.session_id)
            if not self.sync:
                table = self.tables[header.table]
                staleness = table.version - header.step
                table.apply(ids.copy(), grads)
                self._lock.notify_all()
                return PushResult(version=table.version, applied=True, staleness=staleness)
            self._open[header.table][record.worker_id] = (ids.copy(), grads)
            applied = self._close_if_ready(header.table)
            return PushResult(version=self.tables[header.table].version, applied=applied)

    def _check_step(self, name: str, worker_id: str, step: int) -> None:
        """Sync: the push is for the table's open step and this worker's first for it.
        Async: not from the future. (Caller holds `_lock`.)"""
        version = self.tables[name].version
        if step > version:
            raise FailedPrecondition(f"row push for step {step} of table {name!r}, which is "
                                     f"at version {version}: pull first")
        if self.sync and step < version:
            raise Aborted(f"step {step} of table {name!r} closed without worker "
                          f"{worker_id!r}: pull version {version} and go on")
        if self.sync and worker_id in self._open[name]:
            raise FailedPrecondition(f"worker {worker_id!r} already pushed step {step} of "
                                     f"table {name!r}")

    def _close_if_ready(self, name: str) -> bool:
        """Sync: apply the open step of `name` once every live worker pushed (under `_lock`)."""
        pushes = self._open[name]
        if not pushes or not self._members.formed \
                or not self._members.blocking_workers() <= set(pushes):
            return False
        ordered = [pushes[w] for w in sorted(pushes)]  # a fixed summation order
        all_ids = np.concatenate([ids for ids, _ in ordered])
        unique, inverse = np.unique(all_ids, return_inverse=True)
        total = torch.zeros((len(unique), self.tables[name].spec.dim))
        total.index_add_(0, torch.from_numpy(inverse.reshape(-1)),
                         torch.cat([grads for _, grads in ordered]))
        self.tables[name].apply(unique, total / len(ordered))
        self._open[name] = {}
        self._lock.notify_all()
        return True

    def members_changed(self) -> None:
        """Sync: close steps that no longer wait for anyone (a worker left or was evicted)."""
        if not self.sync:
            return
        with self._lock:
            for name in list(self._open):
                self._close_if_ready(name)

    # ---- status, checkpoints -----------------------------------------------------------

    def status(self) -> tuple[TableStatus, ...]:
        with self._lock:
            return tuple(TableStatus(t.spec.name, t.spec.rows, t.spec.dim, t.count, t.nbytes,
                                     t.version, t.spec.optimizer.describe())
                         for t in self.tables.values())

    def snapshot(self) -> dict[str, Any]:
        """The plan and every table's rows and optimizer state ({} when none declared);
        open sync steps are not saved (their workers push them again)."""
        with self._lock:
            if self.plan is None:
                return {}
            return {"plan": table_plan_to_bytes(self.plan), "shard_index": self.shard_index,
                    "tables": {name: t.snapshot() for name, t in self.tables.items()}}

    def restore(self, saved: dict[str, Any]) -> None:
        if not saved:
            return
        plan = table_plan_from_bytes(saved["plan"])
        assert plan is not None
        tables = {t.name: RowTable(t) for t in plan.tables}
        for name, table in tables.items():
            table.restore(saved["tables"][name])
        with self._lock:
            self.plan, self.shard_index = plan, int(saved["shard_index"])
            self.tables, self._open = tables, {name: {} for name in tables}
            self._lock.notify_all()

    def state_hash(self) -> str:
        """SHA-256 over every table's digest (tests: a refused call changed nothing)."""
        with self._lock:
            digest = hashlib.sha256(table_plan_to_bytes(self.plan))
            for table in self.tables.values():
                digest.update(table.digest().encode())
            return digest.hexdigest()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()


def _row_codec(record: SessionRecord, encoded: bool) -> Codec | None:
    """The codec of an encoded row push: the session's push codec, if unbiased."""
    if not encoded:
        return None
    codec = record.push_decoder
    if codec.biased or codec.spec.name == "none":
        raise InvalidArgument(f"rows travel raw or under an unbiased push codec, not "
                              f"{codec.spec}: push them with encoded=false")
    return codec


def _pull_messages(header: RowPullHeader, payload: memoryview,
                   chunk_bytes: int) -> Iterator[bytes]:
    yield encode_row_pull_header(header)
    for start, end in chunk_ranges(payload.nbytes, chunk_bytes):
        yield wire.encode_chunk(0, start, payload[start:end])
