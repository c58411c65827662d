"""Records of the shared-memory data plane (wire: ShmOffer, ShmRanges; docs/wire.md 5g)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShmOffer:
    """A worker's segments, offered in its handshake: pushes are read from `push_segment`,
    pulls written into `pull_segment`; `token` is what the worker wrote at the start of
    the push segment (the server reads it back: the same host, the same /dev/shm)."""

    push_segment: str
    pull_segment: str
    token: bytes


@dataclass(frozen=True)
class ShmRanges:
    """Where each tensor's payload lies in `segment`, in the header's tensor order."""

    segment: str
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
