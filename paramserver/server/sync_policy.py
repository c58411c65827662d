"""Synchronous steps: one push from every live worker, aggregated, applied once.

A tensor's aggregate is the (weighted) mean over the workers that pushed it; a tensor nobody
pushed gets no gradient, which torch.optim treats like `param.grad is None`. Sparse pushes
are added into the aggregate with index_add_, never densified first.

Membership is dynamic: the step closes once every *live* worker pushed (a worker evicted or
gone after pushing still counts; one that never pushed is not waited for), or, with a
quorum K (backup workers, Chen et al. 2016), as soon as K pushes arrived. A push for a step
that already closed is ABORTED: the late worker pulls and catches up.
"""

from __future__ import annotations

import threading
import time

import torch

from paramserver.codecs import DenseUpdate, Update
from paramserver.codecs.base import add_into
from paramserver.errors import Aborted, FailedPrecondition
from paramserver.server.assembly import BufferPool
from paramserver.server.membership import Membership
from paramserver.server.policy import PolicyDefaults
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult


class SyncPolicy(PolicyDefaults):
    """Aggregates the pushes of the current step; `_lock` guards the step's buffers.

    Lock order: `_lock` before `store.lock`.
    """

    def __init__(self, store: ParameterStore, members: Membership, pool: BufferPool,
                 quorum: int = 0) -> None:
        if quorum < 0:
            raise ValueError(f"--sync-quorum must be >= 0, got {quorum}")
        self._store = store
        self._members = members
        self._quorum = quorum
        self._pool = pool
        self._lock = threading.Lock()
        self._sums: dict[str, torch.Tensor] = {}  # flat, viewing a pooled buffer
        self._sum_buffers: list[torch.Tensor] = []
        self._weights: dict[str, float] = {}
        self._pushed: set[str] = set()
        self._opened_at: float | None = None  # first push of the open step

    def check_step(self, worker_id: str, step: int) -> None:
        with self._lock:
            self._check(worker_id, step)

    def _check(self, worker_id: str, step: int) -> None:
        current = self._store.version
        if step < current:
            raise Aborted(f"step {step} already closed without this push (the server is at "
                          f"step {current}); pull version {current} and go on")
        if step > current:
            raise FailedPrecondition(
                f"push for step {step}, but the server is assembling step {current}; "
                f"pull version {current} and recompute the gradient")
        if worker_id in self._pushed:
            raise FailedPrecondition(f"worker {worker_id!r} already pushed step {step}")

    def submit(self, worker_id: str, step: int, weight: float, updates: dict[str, Update],
               buffers: list[torch.Tensor]) -> PushResult:
        adopted: set[int] = set()
        try:
            with self._lock:
                self._check(worker_id, step)
                for name, update in updates.items():
                    self._accumulate(name, update, weight, buffers, adopted)
                self._pushed.add(worker_id)
                if self._opened_at is None:
                    self._opened_at = time.monotonic()
                if not self._ready():
                    return PushResult(version=self._store.version, applied=False)
                return PushResult(version=self._close(), applied=True)
        finally:
            for buffer in buffers:
                if id(buffer) not in adopted:
                    self._pool.give(buffer)

    def members_changed(self) -> None:
        with self._lock:
            if self._pushed and self._ready():
                self._close()

    def _ready(self) -> bool:
        if not self._members.formed:
            return False
        if self._quorum and len(self._pushed) >= self._quorum:
            return True
        return self._members.live_workers() <= self._pushed

    def _close(self) -> int:
        means = {n: total if self._weights[n] == 1.0 else total.div_(self._weights[n])
                 for n, total in self._sums.items()}
        version = self._store.apply(means)
        for buffer in self._sum_buffers:
            self._pool.give(buffer)
        self._sums, self._sum_buffers, self._weights, self._pushed = {}, [], {}, set()
        self._opened_at = None
        return version

    def _accumulate(self, name: str, update: Update, weight: float,
                    buffers: list[torch.Tensor], adopted: set[int]) -> None:
        total = self._sums.get(name)
        if total is not None:
            add_into(total, update, weight)
            self._weights[name] += weight
            return
        spec = self._store.spec(name)
        owner = _owning_buffer(update, buffers, spec.dtype)
        if owner is not None:
            # The first dense push's buffer becomes the sum: no copy, no zero-fill.
            total = update.values  # type: ignore[union-attr]
            if weight != 1.0:
                total.mul_(weight)
            adopted.add(id(owner))
            self._sum_buffers.append(owner)
        else:
            buffer = self._pool.take(spec.nbytes)
            self._sum_buffers.append(buffer)
            total = buffer.view(spec.dtype).zero_()
            add_into(total, update, weight)
        self._sums[name] = total
        self._weights[name] = weight

    def waiting_for(self) -> tuple[float, list[str]]:
        with self._lock:
            if self._opened_at is None:
                return 0.0, []
            missing = sorted(self._members.live_workers() - self._pushed)
            return time.monotonic() - self._opened_at, missing

    def pending(self) -> int:
        with self._lock:
            return len(self._pushed)


def _owning_buffer(update: Update, buffers: list[torch.Tensor],
                   dtype: torch.dtype) -> torch.Tensor | None:
    """The pooled buffer a dense update of the right dtype views, if any."""
    if not isinstance(update, DenseUpdate) or update.values.dtype != dtype:
        return None
    pointer = update.values.data_ptr()
    for buffer in buffers:
        if buffer.data_ptr() == pointer and buffer.numel() == update.values.nbytes:
            return buffer
    return None
