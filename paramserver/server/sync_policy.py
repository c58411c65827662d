"""Synchronous steps: one push from every worker, aggregated, applied once.

A tensor's aggregate is the (weighted) mean over the workers that pushed it; a tensor nobody
pushed gets no gradient, which torch.optim treats like `param.grad is None`. Sparse pushes
are added into the aggregate with index_add_, never densified first.
"""

from __future__ import annotations

import threading

import torch

from paramserver.codecs import DenseUpdate, Update
from paramserver.codecs.base import add_into
from paramserver.errors import FailedPrecondition
from paramserver.server.assembly import BufferPool
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult


class SyncPolicy:
    """Aggregates the pushes of the current step; `_lock` guards the step's buffers.

    Lock order: `_lock` before `store.lock`.
    """

    def __init__(self, store: ParameterStore, expected_workers: int, pool: BufferPool) -> None:
        if expected_workers < 1:
            raise ValueError(f"a synchronous job needs at least one worker, got {expected_workers}")
        self._store = store
        self._expected = expected_workers
        self._pool = pool
        self._lock = threading.Lock()
        self._sums: dict[str, torch.Tensor] = {}  # flat, viewing a pooled buffer
        self._sum_buffers: list[torch.Tensor] = []
        self._weights: dict[str, float] = {}
        self._pushed: set[str] = set()

    def check_step(self, worker_id: str, step: int) -> None:
        with self._lock:
            self._check(worker_id, step)

    def _check(self, worker_id: str, step: int) -> None:
        current = self._store.version
        if step != current:
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
                if len(self._pushed) < self._expected:
                    return PushResult(version=self._store.version, applied=False)
                means = {n: total if self._weights[n] == 1.0 else total.div_(self._weights[n])
                         for n, total in self._sums.items()}
                version = self._store.apply(means)
                for buffer in self._sum_buffers:
                    self._pool.give(buffer)
                self._sums, self._sum_buffers, self._weights, self._pushed = {}, [], {}, set()
                return PushResult(version=version, applied=True)
        finally:
            for buffer in buffers:
                if id(buffer) not in adopted:
                    self._pool.give(buffer)

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
