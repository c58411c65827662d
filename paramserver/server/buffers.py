"""Pooled byte buffers, and the ownership of the ones a request holds.

A push's payload arrives in pooled buffers; its decoded updates view them. Whoever holds a
`PooledBuffers` owns those buffers until it hands them on (`adopt`, `transfer`) or releases
them, which its context manager does on exit, so no code path returns them by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import torch


class BufferPool:
    """Recycles byte buffers by size so each step does not page-fault fresh memory.

    Buffers are 1-D uint8 tensors; callers view them as the dtype they need. `_lock`
    guards `_free`.
    """

    def __init__(self, max_per_size: int = 4) -> None:
        self._free: dict[int, list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._max_per_size = max_per_size

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buffer: torch.Tensor) -> None:
        if buffer.dtype != torch.uint8 or buffer.dim() != 1:
            raise ValueError("only 1-D uint8 buffers from take() go back to the pool")
        with self._lock:
            free = self._free.setdefault(buffer.numel(), [])
            if len(free) < self._max_per_size:
                free.append(buffer)


class PooledBuffers:
    """Buffers taken from `pool` and owned here until adopted, transferred or released.

    Not thread-safe: one request (or one aggregate, under its policy's lock) owns it.
    """

    def __init__(self, pool: BufferPool, buffers: Iterable[torch.Tensor] = ()) -> None:
        self._pool = pool
        self._buffers = list(buffers)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()

    def __len__(self) -> int:
        return len(self._buffers)

    @property
    def nbytes(self) -> int:
        return sum(buffer.numel() for buffer in self._buffers)

    def take(self, nbytes: int) -> torch.Tensor:
        """A fresh buffer from the pool, owned here."""
        buffer = self._pool.take(nbytes)
        self._buffers.append(buffer)
        return buffer

    def owner_of(self, values: torch.Tensor) -> torch.Tensor | None:
        """The held buffer whose bytes `values` views whole, if any."""
        pointer, nbytes = values.data_ptr(), values.nbytes
        for buffer in self._buffers:
            if buffer.data_ptr() == pointer and buffer.numel() == nbytes:
                return buffer
        return None

    def adopt(self, buffer: torch.Tensor, into: PooledBuffers) -> None:
        """Move one held buffer to `into`, which releases it from then on."""
        self._buffers = [b for b in self._buffers if b is not buffer]
        into._buffers.append(buffer)

    def transfer(self, into: PooledBuffers) -> None:
        """Move every held buffer to `into`."""
        into._buffers += self._buffers
        self._buffers = []

    def release(self) -> None:
        """Give every held buffer back to the pool."""
        buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            self._pool.give(buffer)
