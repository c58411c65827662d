"""Reassemble a chunked tensor stream into flat buffers, validating as it goes.

A push (or a registration's initial values) is only handed on once every tensor arrived
whole, so a truncated, oversize or out-of-order stream changes no server state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from paramserver import serde, wire
from paramserver.errors import InvalidArgument, NotFound
from paramserver.server.buffers import PooledBuffers
from paramserver.types import TensorSpec
from paramserver.wire import Chunk


def first_message(stream: Iterator[object], what: str) -> object:
    """The header a client stream must open with (not yet type-checked)."""
    first = next(stream, None)
    if first is None:
        raise InvalidArgument(f"empty {what} stream: the first message must be a header")
    if isinstance(first, serde.MalformedMessage):
        raise InvalidArgument(first.reason)
    if isinstance(first, wire.Chunk):
        raise InvalidArgument(f"{what} stream must open with a header, not a chunk")
    return first


def skip_chunks(stream: Iterable[object]) -> None:
    """Consume the rest of a push whose answer is already known (a duplicate)."""
    for _ in stream:
        pass


def drain_chunks(stream: Iterable[object], assembler: TensorAssembler, what: str) -> None:
    """Feed every remaining message to the assembler; a header or garbage is an error."""
    for chunk in chunks_of(stream, what):
        assembler.add(chunk)


def chunks_of(stream: Iterable[object], what: str) -> Iterator[Chunk]:
    """The remaining messages, each a chunk; a header or garbage is an error."""
    for message in stream:
        if isinstance(message, wire.Chunk):
            yield message
        elif isinstance(message, serde.MalformedMessage):
            raise InvalidArgument(message.reason)
        else:
            raise InvalidArgument(f"a {what} stream carries exactly one header, at the start")


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
    or its codec's bound). Buffers come from `owner` (which then owns them) or, without
    one, are allocated fresh. Call `finish()` or `finish_payloads()` for the payloads.
    """

    def __init__(self, specs: Sequence[TensorSpec], owner: PooledBuffers | None = None,
                 limits: Sequence[int] | None = None) -> None:
        self.specs = tuple(specs)
        self.limits = tuple(limits) if limits is not None else tuple(s.nbytes for s in specs)
        self._owner = owner
        self._received = [0] * len(self.specs)
        self._buffers: list[torch.Tensor | None] = [None] * len(self.specs)
        self._bytes: list[np.ndarray | None] = [None] * len(self.specs)

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

    def _allocate(self, index: int) -> np.ndarray:
        limit = self.limits[index]
        buffer = (self._owner.take(limit) if self._owner is not None
                  else torch.empty(limit, dtype=torch.uint8))
        self._buffers[index] = buffer
        as_bytes = buffer.numpy()
        self._bytes[index] = as_bytes
        return as_bytes

    def received(self, index: int) -> torch.Tensor:
        """Tensor `index`'s payload bytes so far (a view into its buffer)."""
        buffer = self._buffers[index]
        return (buffer[:self._received[index]] if buffer is not None
                else torch.empty(0, dtype=torch.uint8))

    def finish_payloads(self) -> list[torch.Tensor]:
        """Each tensor's payload bytes as received (views into the buffers)."""
        return [buffer[:received] if buffer is not None else torch.empty(0, dtype=torch.uint8)
                for buffer, received in zip(self._buffers, self._received)]

    def finish(self) -> dict[str, torch.Tensor]:
        """Uncompressed tensors by name (flat); InvalidArgument if any is short."""
        for index, spec in enumerate(self.specs):
            if self._received[index] != spec.nbytes:
                raise InvalidArgument(
                    f"truncated stream: tensor {spec.name!r} received "
                    f"{self._received[index]} of {spec.nbytes} bytes")
        return {spec.name: payload.view(spec.dtype)
                for spec, payload in zip(self.specs, self.finish_payloads())}
