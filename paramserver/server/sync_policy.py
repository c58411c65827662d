"""Synchronous steps: one push from every worker, aggregated, applied once.

A tensor's aggregate is the (weighted) mean over the workers that pushed it; a tensor nobody
pushed gets no gradient, which torch.optim treats like `param.grad is None`.
"""

from __future__ import annotations

import threading

import torch

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
        self._sums: dict[str, torch.Tensor] = {}
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

    def submit(self, worker_id: str, step: int, weight: float,
               grads: dict[str, torch.Tensor]) -> PushResult:
        with self._lock:
            try:
                self._check(worker_id, step)
            except FailedPrecondition:
                self._release(grads.values())
                raise
            for name, grad in grads.items():
                self._accumulate(name, grad, weight)
            self._pushed.add(worker_id)
            if len(self._pushed) < self._expected:
                return PushResult(version=self._store.version, applied=False)
            means = {name: total.div_(self._weights[name]) for name, total in self._sums.items()}
            version = self._store.apply(means)
            self._release(self._sums.values())
            self._sums, self._weights, self._pushed = {}, {}, set()
            return PushResult(version=version, applied=True)

    def _accumulate(self, name: str, grad: torch.Tensor, weight: float) -> None:
        total = self._sums.get(name)
        if total is None:
            # The first push's buffer becomes the sum: no copy, no zero-fill.
            self._sums[name] = grad.mul_(weight) if weight != 1.0 else grad
            self._weights[name] = weight
            return
        total.add_(grad, alpha=weight)
        self._weights[name] += weight
        self._pool.give(grad)

    def _release(self, tensors: object) -> None:
        for tensor in tensors:  # type: ignore[attr-defined]
            self._pool.give(tensor)

    def pending(self) -> int:
        with self._lock:
            return len(self._pushed)
