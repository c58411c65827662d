"""Payloads produced and consumed piece by piece, so coding overlaps the transfer (issue #14).

A `StreamedPayload` is one codec payload whose bytes are made in order, a piece at a time,
the first time a reader asks for them: the sender encodes piece i + 1 while piece i is on
the wire, and every reader (a retried push, the pulls of all workers of one version) reads
the same bytes, made once. A `StreamDecoder` is the receiving half: fed the payload's bytes
as they arrive, it decodes what is complete, and hands over the whole update at the end.
Neither changes the payload's bytes: the wire format is the codec's own (docs/wire.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from paramserver.codecs.base import Update

# Makes the next piece: writes payload bytes [filled, end) into `out` and returns end.
Producer = Callable[[torch.Tensor, int], int]


class StreamedPayload:
    """A 1-D uint8 payload of `nbytes` bytes, filled by `produce` on demand. Thread-safe:
    readers wait on one lock while a piece is made, and never see a byte twice made."""

    def __init__(self, nbytes: int, produce: Producer | None,
                 out: torch.Tensor | None = None, filled: int = 0) -> None:
        """`filled`: how many leading bytes of `out` are made already."""
        self.nbytes = nbytes
        self.tensor = out if out is not None else torch.empty(nbytes, dtype=torch.uint8)
        self._produce = produce
        self._filled = nbytes if produce is None else filled
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, payload: torch.Tensor) -> StreamedPayload:
        """A payload already whole (a codec without a streaming encoder)."""
        return cls(payload.numel(), None, payload.reshape(-1).contiguous())

    def read(self, start: int, end: int) -> memoryview:
        """Bytes [start, end), made first if they are not yet."""
        end = min(end, self.nbytes)
        if self._filled < end:
            with self._lock:
                while self._filled < end:
                    assert self._produce is not None
                    self._filled = self._produce(self.tensor, self._filled)
        return memoryview(self.tensor.numpy().data)[start:end]

    def complete(self) -> torch.Tensor:
        """The whole payload (made to the end)."""
        self.read(0, self.nbytes)
        return self.tensor

    def chunks(self, chunk_bytes: int) -> Iterator[tuple[int, memoryview]]:
        """(offset, bytes) pieces of at most `chunk_bytes`, in order."""
        for start in range(0, self.nbytes, chunk_bytes):
            yield start, self.read(start, start + chunk_bytes)


Payload = memoryview | StreamedPayload  # what a push sends per tensor


def payload_bytes(payload: Payload, start: int, end: int) -> memoryview:
    """Bytes [start, end) of a payload, made first when it is a streamed one."""
    return payload.read(start, end) if isinstance(payload, StreamedPayload) else payload[
        start:end]


class StreamDecoder(Protocol):
    """Decodes one payload of a known size as its bytes arrive, in order."""

    def feed(self, data: memoryview) -> None:
        """The payload's next bytes; raises CodecError for bytes that cannot be valid."""

    def finish(self) -> Update:
        """The update; CodecError when the payload is short or invalid."""
