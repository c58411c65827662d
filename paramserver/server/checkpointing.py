"""When a shard checkpoints, and what it restores on start-up.

The file format and atomic writes live in `checkpoint.py`; this module decides what a shard's
state is (parameters, optimizer state, version, plan, push ledger, incarnations), writes it
every `checkpoint_every` steps and on shutdown, and restores the newest valid one.
Under --dp the privacy ledger goes in too (`federated.privacy_ledger`): a restarted
federation reports epsilon from where it stopped, never from zero.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from paramserver.federated import privacy_ledger
from paramserver.federated.privacy import DPConfig, PrivacyAccountant
from paramserver.server.checkpoint import (
    BeforeWrite,
    CheckpointStore,
    RefusedCheckpoint,
    ShardState,
)
from paramserver.server.ledger import PushLedger
from paramserver.server.membership import Membership
from paramserver.server.store import ParameterStore
from paramserver.server.tables import TableService

log = logging.getLogger(__name__)


class ShardCheckpointer:
    """Checkpoints of one shard; `_lock` serialises saves (periodic ones and the final one)."""

    def __init__(self, store: ParameterStore, members: Membership, ledger: PushLedger,
                 directory: Path, every: int = 0, reform_timeout_s: float = 60.0,
                 before_write: BeforeWrite | None = None, key: bytes | None = None,
                 tables: TableService | None = None, dp: DPConfig | None = None,
                 accountant: PrivacyAccountant | None = None) -> None:
        self._store = store
        self._members = members
        self._ledger = ledger
        self._tables = tables  # row-sparse tables (issue #16), saved beside the model
        self._dp = dp or DPConfig()
        self._accountant = accountant  # --dp: the rounds' privacy ledger (issue #17)
        self._files = CheckpointStore(directory, before_write=before_write, key=key)
        self._every = every
        self._reform_timeout_s = reform_timeout_s
        self._lock = threading.Lock()
        self._saved_version = 0  # the version of the newest checkpoint
        self.last_save_s = 0.0  # how long the newest checkpoint took to write (metrics)
        self.last_saved_at = 0.0  # its wall-clock time, time.time() (0: none yet)

    def save(self, every: int = 0) -> Path | None:
        """Write this shard's state (atomically, with a checksum); None without a model, or
        when `every` is given and fewer steps than that passed since the last checkpoint."""
        if self._store.layout is None:
            return None
        with self._lock:
            if every and self._store.version - self._saved_version < every:
                return None
            started = time.perf_counter()
            version, params, optimizer = self._store.snapshot()
            assert self._store.layout is not None and self._store.plan is not None
            state = ShardState(version, self._store.layout, self._store.plan,
                               self._store.shard_index, params, optimizer,
                               self._extra(version),
                               self._tables.snapshot() if self._tables else {})
            path = self._files.save(state)
            self._saved_version = max(self._saved_version, version)
            self.last_save_s, self.last_saved_at = time.perf_counter() - started, time.time()
        log.info("checkpoint of step %d written to %s", version, path)
        return path

    def _extra(self, version: int) -> dict[str, object]:
        extra: dict[str, object] = {"ledger": self._ledger.table(),
                                    "incarnations": self._members.incarnations(),
                                    "members": sorted(self._members.live_workers())}
        if self._accountant is not None:  # the rounds applied before `version`, exactly
            extra[privacy_ledger.KEY] = privacy_ledger.ledger_state(self._accountant, version)
        return extra

    def maybe_save(self) -> None:
        """Checkpoint once `every` steps passed since the last one, whoever closed them (a
        push, an eviction, a round timeout)."""
        if self._every and self._store.version - self._saved_version >= self._every:
            self.save(self._every)

    def restore(self) -> int:
        """Install the newest valid checkpoint; its version, or -1 when there is none.
        RefusedCheckpoint, before anything is installed, when this server's settings must
        not resume it."""
        state = self._files.load_latest()
        if state is None:
            return -1
        try:
            privacy_ledger.restore(state.extra.get(privacy_ledger.KEY), self._accountant,
                                   self._dp, state.version)
        except ValueError as exc:
            raise RefusedCheckpoint(f"{self._files.directory}: {exc}") from exc
        self._store.restore(state.layout, state.plan, state.shard_index, state.params,
                            state.optimizer, state.version)
        self._ledger.restore(state.extra.get("ledger", {}))
        if self._tables is not None:
            self._tables.restore(state.tables)
        self._members.restore_incarnations(state.extra.get("incarnations", {}))
        members = state.extra.get("members", [])
        self._members.reform(members, self._reform_timeout_s)
        self._saved_version = state.version
        log.warning("resumed shard %d from the checkpoint of step %d (state %s); the job "
                    "re-forms: waiting up to %.0fs for %s", state.shard_index, state.version,
                    self._store.state_hash(), self._reform_timeout_s,
                    members or "the workers it started with")
        return state.version
