"""Long-lived worker processes, reused by every job of a run.

Starting a process that imports torch takes ~1.5 s of CPU; on 2 cores, spawning W workers
for each of dozens of jobs would cost minutes. The pool spawns them once. `run` hands one
task to each of N processes at once: a task that waits on a barrier keeps its process busy,
so N concurrent tasks always land on N distinct processes as long as N <= size. Barriers,
values and locks come from a manager, whose proxies (unlike plain multiprocessing objects)
may be passed to tasks after the processes started.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.pool import AsyncResult
from typing import Any, Self, TypeVar

R = TypeVar("R")


def _prepare() -> None:
    """Each worker process: one torch thread (W of them share the cores with the servers),
    the imports every task needs, then the allocator and GC settings of our CLI workers."""
    import torch

    import benchmarks.suite.ours  # noqa: F401 - imports torch, grpc and the client once
    from paramserver.process_tuning import tune_process

    torch.set_num_threads(1)
    tune_process()


class WorkerPool:
    """`size` spawned processes; use as a context manager (ends them by pid on exit)."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.size = size
        self._manager = context.Manager()
        self._pool = context.Pool(size, initializer=_prepare)

    @property
    def manager(self) -> Any:
        """Makes Barrier, Value, Lock, Queue, list: proxies that tasks may receive."""
        return self._manager

    def start(self, target: Callable[..., R], args_per_task: Sequence[tuple[Any, ...]]
              ) -> AsyncResult[list[R]]:
        """`target(*args)` for each args tuple, concurrently, on distinct processes; `.get()`
        on the answer gives the results in order or raises a task's exception (with its
        remote traceback)."""
        if len(args_per_task) > self.size:
            raise ValueError(f"{len(args_per_task)} concurrent tasks, but only {self.size} "
                             "processes: the tasks would wait for each other forever")
        return self._pool.starmap_async(target, args_per_task, chunksize=1)

    def run(self, target: Callable[..., R], args_per_task: Sequence[tuple[Any, ...]],
            timeout_s: float) -> list[R]:
        """`start` and wait at most `timeout_s` for every result."""
        return self.start(target, args_per_task).get(timeout_s)

    def close(self) -> None:
        self._pool.terminate()  # SIGTERM to each worker by pid, then join
        self._pool.join()
        self._manager.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
