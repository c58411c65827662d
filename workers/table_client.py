"""The job's row-sparse tables as one worker sees them: rows pulled from and gradient rows
pushed to the shards that own them (issue #16; docs/wire.md section 11).

Row r of every table lives on shard r % N. Per (table, shard) the client remembers the
table's version: in sync mode the step it pushes next (every worker pushes every table to
every shard once per step, empty where its batch touched none of that shard's rows, so
that the step closes) and the version its next pull waits for; in async mode the version
its rows were read at.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from paramserver.codecs import Codec, CodecError
from paramserver.errors import Aborted, FailedPrecondition, SessionExpired
from paramserver.serde.tables import MAX_ROWS_PER_CALL
from paramserver.tables import TablePlan, TableSpec, shard_of
from paramserver.tables.row_codec import decode_rows
from paramserver.types import CodecSpec, PushResult
from workers.connection import ServerConnection
from workers.fan_out import ShardFanOut


class TableClient:
    """Pull and push rows of the tables in `plan` over `connections` (in shard order).

    `_lock` guards the per-(table, shard) versions; pulls of different tables may run at
    once (prefetch), pushes run on the training loop's thread.
    """

    def __init__(self, connections: Sequence[ServerConnection], plan: TablePlan,
                 sync: bool, rejoin: Callable[[int, str], None] | None = None,
                 codecs: Sequence[Codec] = (),
                 pull_codecs: Callable[[int], CodecSpec] | None = None) -> None:
        self.connections = list(connections)
        self._codecs = codecs  # per shard, the session's push codec (updated on rejoin)
        # per shard, the session's pull codec now (it says how pulled rows are encoded)
        self._pull_codecs = pull_codecs or (lambda shard: CodecSpec("none"))
        self._rejoin = rejoin  # new session on a shard that forgot ours (ParameterClient's)
        self.rejoins = 0
        self.plan = plan
        self.sync = sync
        self.specs = plan.by_name()
        self._fan_out = ShardFanOut(len(self.connections))
        self._lock = threading.Lock()
        self._versions = {(t.name, k): 0 for t in plan.tables for k in range(plan.num_shards)}
        self.rows_pulled = 0  # rows (not bytes) moved, for benchmarks and tests
        self.rows_pushed = 0

    def declare(self) -> bool:
        """Declare the tables on every shard (or check them against the recorded ones), and
        learn each table's version there. True when this call recorded them somewhere."""
        answers = self._fan_out.run(
            lambda k: self.connections[k].declare_tables(self.plan, k))
        for created, recorded in answers:
            if recorded != self.plan:
                raise FailedPrecondition(f"the servers hold other tables ({recorded}); this "
                                         f"worker declares {self.plan}")
        self.refresh_versions()  # an empty pull answers with the version
        return any(created for created, _ in answers)

    def refresh_versions(self) -> None:
        """Learn every table's version on every shard again (after a state was loaded)."""
        for spec in self.plan.tables:
            self._pull_rows(spec, np.empty(0, dtype=np.int64), wait=False)

    def pull(self, table: str, ids: np.ndarray, wait: bool = True) -> torch.Tensor:
        """Rows `ids` (unique int64) of `table`, float32 (len(ids), dim), on the CPU. In
        sync mode (`wait`) each shard's rows are of the version after the last step this
        worker pushed."""
        return self._pull_rows(self.specs[table], np.asarray(ids, dtype=np.int64), wait)

    def _pull_rows(self, spec: TableSpec, ids: np.ndarray, wait: bool) -> torch.Tensor:
        out = torch.empty((len(ids), spec.dim), dtype=torch.float32)
        owners = shard_of(ids, self.plan.num_shards)

        def pull_shard(k: int) -> None:
            mine = np.flatnonzero(owners == k)
            for start in range(0, max(len(mine), 1), MAX_ROWS_PER_CALL):
                part = mine[start:start + MAX_ROWS_PER_CALL]
                out[torch.from_numpy(part)] = self._pull_part(spec, k, ids[part], wait)

        self._fan_out.run(pull_shard)
        self.rows_pulled += len(ids)
        return out

    def _pull_part(self, spec: TableSpec, shard: int, ids: np.ndarray,
                   wait: bool) -> torch.Tensor:
        buffer = bytearray()

        def sink(index: int, offset: int, data: memoryview) -> None:
            buffer[offset:offset + data.nbytes] = data

        with self._lock:
            min_version = self._versions[(spec.name, shard)] if self.sync and wait else 0
        try:
            header = self.connections[shard].pull_rows(spec.name, ids, min_version, sink)
        except SessionExpired as error:  # the shard restarted (or evicted us): join again
            self._join_again(shard, error)
            return self._pull_part(spec, shard, ids, wait=False)
        with self._lock:
            if not self.sync or not wait:  # async: the version the rows were read at
                self._versions[(spec.name, shard)] = header.version
        if header.rows != len(ids) or header.dim != spec.dim:
            raise CodecError(f"asked shard {shard} for {len(ids)} rows of {spec.dim} values of "
                             f"table {spec.name!r}, got {header.rows} x {header.dim}")
        return decode_rows(header, buffer, self._pull_codecs(shard))

    def push(self, table: str, ids: np.ndarray, grads: torch.Tensor) -> list[PushResult]:
        """Push gradient rows for unique `ids` to their shards (sync: to every shard, empty
        where none of its rows was touched); one answer per shard pushed to."""
        return self.push_many({table: (ids, grads)})

    def push_many(self, rows: dict[str, tuple[np.ndarray, torch.Tensor]]) -> list[PushResult]:
        """`push` for several tables at once: one thread per shard pushes them in turn (a
        connection's pushes must arrive in sequence order, so never two at once)."""
        parts = {name: (ids, shard_of(ids, self.plan.num_shards),
                        grads.detach().to("cpu", torch.float32))
                 for name, (ids, grads) in rows.items()}

        def push_shard(k: int) -> list[PushResult]:
            results = []
            for name, (ids, owners, grads) in parts.items():
                mine = np.flatnonzero(owners == k)
                if len(mine) or self.sync:
                    result = self._push_part(self.specs[name], k, ids[mine],
                                             grads[torch.from_numpy(mine)])
                    results += [result] if result is not None else []
            return results

        answers = self._fan_out.run(push_shard)
        self.rows_pushed += sum(len(ids) for ids, _, _ in parts.values())
        return [r for shard in answers for r in shard]

    def _push_part(self, spec: TableSpec, shard: int, ids: np.ndarray,
                   grads: torch.Tensor) -> PushResult | None:
        with self._lock:
            step = self._versions[(spec.name, shard)]
        try:
            result = self.connections[shard].push_rows(spec.name, step, ids, grads,
                                                       self._row_codec(shard))
        except (Aborted, SessionExpired) as error:  # this step's rows are lost for the shard
            if isinstance(error, SessionExpired):
                self._join_again(shard, error)
            self._pull_part(spec, shard, np.empty(0, dtype=np.int64), wait=False)
            return None
        if self.sync:
            with self._lock:
                self._versions[(spec.name, shard)] = step + 1
        return result

    def _row_codec(self, shard: int) -> Codec | None:
        """Rows go out under the shard's push codec when it is unbiased (fp16, bf16, qsgd),
        raw otherwise: a sparsifier would need error feedback per row."""
        codec = self._codecs[shard] if shard < len(self._codecs) else None
        return None if codec is None or codec.biased or codec.spec.name == "none" else codec

    def _join_again(self, shard: int, error: SessionExpired) -> None:
        """A new session on `shard`; a restarted shard restored its tables from its
        checkpoint, so every table's version there is learned again."""
        if self._rejoin is None:
            raise error
        self._rejoin(shard, error.message)
        self.rejoins += 1
        self.connections[shard].declare_tables(self.plan, shard)  # a shard without a checkpoint
        for spec in self.plan.tables:
            self._pull_part(spec, shard, np.empty(0, dtype=np.int64), wait=False)

    def close(self) -> None:
        self._fan_out.close()
