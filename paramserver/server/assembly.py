"""Reassemble a chunked tensor stream into flat buffers, validating as it goes.

A push (or a registration's initial values) is only handed on once every tensor arrived
whole, so a truncated, oversize or out-of-order stream changes no server state.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from paramserver.errors import InvalidArgument, NotFound
from paramserver.types import TensorSpec
from paramserver.wire import Chunk


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


def check_specs(offered: Sequence[TensorSpec], registered: Mapping[str, TensorSpec]) -> None:
    """Every offered tensor must exist in the registered layout with the same shape and dtype."""
    seen: set[str] = set()
    for spec in offered:
        if spec.name in seen:
            raise InvalidArgument(f"tensor {spec.name!r} is listed twice in the header")
        seen.add(spec.name)
        known = registered.get(spec.name)
        if known is None:
            raise NotFound(f"unknown tensor {spec.name!r}; the model has "
                           f"{sorted(registered)[:8]}{'...' if len(registered) > 8 else ''}")
        if known != spec:
            raise InvalidArgument(
                f"tensor {spec.name!r} sent with shape {list(spec.shape)} dtype {spec.dtype}, "
                f"but it is registered with shape {list(known.shape)} dtype {known.dtype}")


class TensorAssembler:
    """Collects the chunks of each tensor's payload named in a header into byte buffers.

    Chunks of one tensor must arrive in order and without gaps (the client sends them so);
    tensors may interleave. A payload may not exceed `limits[i]` bytes (the tensor's size,
    or its codec's bound). Call `finish()` for the payloads or `discard()` to recycle them.
    """

    def __init__(self, specs: Sequence[TensorSpec], pool: BufferPool | None = None,
                 limits: Sequence[int] | None = None) -> None:
        self.specs = tuple(specs)
        self.limits = tuple(limits) if limits is not None else tuple(s.nbytes for s in specs)
        self._pool = pool
        self._received = [0] * len(self.specs)
        self._buffers: list[torch.Tensor | None] = [None] * len(self.specs)
        self._bytes: list[np.ndarray | None] = [None] * len(self.specs)
        self.bytes_received = 0

    def add(self, chunk: Chunk) -> None:
        if chunk.tensor >= len(self.specs):
            raise InvalidArgument(f"chunk for tensor index {chunk.tensor}, but the header "
                                  f"lists {len(self.specs)} tensors")
        spec = self.specs[chunk.tensor]
        expected = self._received[chunk.tensor]
        if chunk.offset != expected:
            raise InvalidArgument(f"tensor {spec.name!r}: chunk at byte {chunk.offset}, expected "
                                  f"{expected} (chunks must be in order, without gaps)")
        end = chunk.offset + chunk.data.nbytes
        if end > self.limits[chunk.tensor]:
            raise InvalidArgument(f"payload larger than declared: tensor {spec.name!r} takes "
                                  f"at most {self.limits[chunk.tensor]} bytes but a chunk ends "
                                  f"at byte {end}")
        target = self._bytes[chunk.tensor]
        if target is None:
            target = self._allocate(chunk.tensor)
        target[chunk.offset:end] = np.frombuffer(chunk.data, dtype=np.uint8)
        self._received[chunk.tensor] = end
        self.bytes_received += chunk.data.nbytes

    def _allocate(self, index: int) -> np.ndarray:
        limit = self.limits[index]
        buffer = self._pool.take(limit) if self._pool else torch.empty(limit, dtype=torch.uint8)
        self._buffers[index] = buffer
        as_bytes = buffer.numpy()
        self._bytes[index] = as_bytes
        return as_bytes

    def finish_payloads(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(payload bytes as received, the pooled buffer holding them) per tensor.

        The caller owns the buffers from here on and gives them back to the pool.
        """
        out = []
        for index in range(len(self.specs)):
            buffer = self._buffers[index]
            received = self._received[index]
            payload = buffer[:received] if buffer is not None else torch.empty(0, dtype=torch.uint8)
            out.append((payload, buffer))
        self._buffers = [None] * len(self.specs)
        self._bytes = [None] * len(self.specs)
        return out

    def finish(self) -> dict[str, torch.Tensor]:
        """Uncompressed tensors by name (flat); InvalidArgument (and recycles) if any is short."""
        for index, spec in enumerate(self.specs):
            if self._received[index] != spec.nbytes:
                self.discard()
                raise InvalidArgument(
                    f"truncated stream: tensor {spec.name!r} received "
                    f"{self._received[index]} of {spec.nbytes} bytes")
        return {spec.name: payload.view(spec.dtype)
                for spec, (payload, _) in zip(self.specs, self.finish_payloads())}

    def discard(self) -> None:
        """Give every buffer back to the pool; the assembler is unusable afterwards."""
        if self._pool is not None:
            for buffer in self._buffers:
                if buffer is not None:
                    self._pool.give(buffer)
        self._buffers = [None] * len(self.specs)
        self._bytes = [None] * len(self.specs)
