"""The server's side of the shared-memory data plane (issue #14; docs/wire.md 5g).

Opt-in (`--shm-data-plane`): a worker on the server's host offers two segments it created
(`paramserver/shm/segments.py`) in its handshake; the server accepts when the flag is on and
it can open both and read back the token the worker wrote (the same host, the same user).
Anything else (flag off, another host, another user, a bad name) is logged and answered
`shm_data_plane=false`: that session's pushes and pulls stay on the gRPC streams. A pull
with a delta codec (top-k, qsgd) streams in any case (`core.pull` serves it first).

Push: the header names the session's push segment and one byte range per tensor; every
range is checked against the segment before anything else (`intake.py` check 2b), and
the payloads are then read in windows and handed on as ordinary chunks (`wire.Chunk`),
so checks 5-12, exactly-once, the in-place aggregate and discard-on-failure are the ones
a gRPC push goes through; where no push wrote the aggregate yet (a step's first push)
each window-sized range is read straight into it and checked there (`SegmentReader`). Pull: the values are written into the session's pull segment,
each piece under the store lock as a streamed pull's chunks are (so a pull never sees half
a step), and the answer is the header alone, naming the ranges.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import torch

from paramserver import serde, wire
from paramserver.codecs import DELTA_PULL_CODECS, Codec
from paramserver.errors import FailedPrecondition, InvalidArgument, NotFound, ParamServerError
from paramserver.server.config import ServerConfig
from paramserver.server.membership import SessionRecord
from paramserver.server.pull import encoded_pieces
from paramserver.server.store import ParameterStore
from paramserver.shm import segments
from paramserver.shm.records import ShmOffer, ShmRanges
from paramserver.types import PullHeader, PushHeader, TensorSpec

log = logging.getLogger(__name__)


def accept_offer(config: ServerConfig, record: SessionRecord, offer: ShmOffer | None) -> bool:
    """Whether this session's payloads may travel in its offered segments (kept on the
    record); False falls back to the gRPC streams, and says why in the log."""
    if offer is None:
        return False
    who = f"session {record.session_id[:8]} ({record.worker_id!r})"
    if not config.shm_data_plane:
        log.info("%s offered a shared-memory data plane; this server runs without "
                 "--shm-data-plane: gRPC streams", who)
        return False
    try:
        fd = segments.open_segment(offer.push_segment, writable=False)
        try:
            token = os.pread(fd, segments.TOKEN_BYTES, 0)
        finally:
            os.close(fd)
        os.close(segments.open_segment(offer.pull_segment, writable=True))
        if len(offer.token) != segments.TOKEN_BYTES or token != offer.token:
            raise NotFound("the push segment does not hold the offered token (another host's "
                           "/dev/shm?)")
    except (ParamServerError, OSError) as error:
        log.info("%s: shared-memory data plane refused (%s): gRPC streams", who, error)
        return False
    record.shm = offer
    log.info("%s: shared-memory data plane accepted", who)
    return True


def _session_segment(record: SessionRecord, name: str, which: str) -> str:
    if record.shm is None:
        raise FailedPrecondition(f"session {record.session_id[:8]} has no shared-memory data "
                                 "plane (not offered, or not accepted at its handshake)")
    segments.check_name(name)
    own = record.shm.push_segment if which == "push" else record.shm.pull_segment
    if name != own:
        raise NotFound(f"shared-memory segment {name!r} is not this session's {which} "
                       "segment")
    return name


def push_chunks(record: SessionRecord, header: PushHeader, stream: Iterator[object],
                codec: Codec) -> Iterator[object]:
    """The push's chunks, read from its segment; refuses a bad segment or range (and a
    stream that carries chunks besides) before anything is read or changed."""
    ranges = header.shm
    assert ranges is not None
    name = _session_segment(record, ranges.segment, "push")
    count = len(header.tensors)
    if len(ranges.offsets) != count or len(ranges.lengths) != count:
        raise InvalidArgument(f"the push names {len(ranges.offsets)} offsets and "
                              f"{len(ranges.lengths)} lengths for {count} tensors")
    fd = segments.open_segment(name, writable=False)
    try:
        size = segments.segment_size(fd)
        _check_stamp(fd, header.sequence)
    finally:
        os.close(fd)
    for spec, offset, length in zip(header.tensors, ranges.offsets, ranges.lengths):
        if offset < segments.PAYLOAD_AT:
            raise InvalidArgument(f"tensor {spec.name!r}: its range starts at byte {offset}, "
                                  f"inside the segment's first {segments.PAYLOAD_AT} (token "
                                  "and stamp)")
        if offset + length > size:
            raise InvalidArgument(f"tensor {spec.name!r}: bytes [{offset}, {offset + length}) "
                                  f"lie past the end of segment {name!r} ({size} bytes)")
        limit = codec.max_payload_nbytes(spec.numel, spec.dtype)
        if length > limit:
            raise InvalidArgument(f"payload larger than declared: tensor {spec.name!r} takes "
                                  f"at most {limit} bytes but its range holds {length}")
    if next(stream, None) is not None:
        raise InvalidArgument("a push whose payload is in shared memory carries no chunks")
    return SegmentReader(name, ranges, header.sequence)


def _check_stamp(fd: int, sequence: int) -> None:
    """The segment holds this push (a sequenced one), not the worker's next."""
    stamp = segments.read_stamp(fd)
    if sequence and stamp != sequence:
        raise InvalidArgument(f"the push segment holds push {stamp}, not push {sequence}: "
                              "it was written over while this push was read")


class SegmentReader:
    """A push's payload in its segment: iterated, one window at a time as chunks (each is
    consumed, added or copied into a staging buffer, before the window is read again); or,
    for the in-place aggregate (`inplace.DirectSource`), range by range into memory the
    reader chooses. Either way the stamp is read again at the end: a worker that gave up
    on this push and wrote its next one meanwhile changed it first, and this push is
    refused (after a first add: its step discarded)."""

    def __init__(self, name: str, ranges: ShmRanges, sequence: int) -> None:
        self._name, self._ranges, self._sequence = name, ranges, sequence
        self._window = bytearray()  # made at the first window read (`pieces`)
        self._chunks: Iterator[object] | None = None
        self._fd = -1
        self._at = self._nbytes = 0  # the current range (`ranges`): where, how long

    def __iter__(self) -> Iterator[object]:
        return self

    def __next__(self) -> object:
        if self._chunks is None:
            self._chunks = self._read_chunks()
        return next(self._chunks)

    def _read_chunks(self) -> Iterator[object]:
        for index, at, _ in self.ranges():
            for data in self.pieces():
                yield wire.Chunk(index, at, data)
                at += data.nbytes

    def ranges(self) -> Iterator[tuple[int, int, int]]:
        """(tensor index, byte in its payload, bytes) per window-sized range, in order."""
        self._fd = segments.open_segment(self._name, writable=False)
        try:
            for index, (offset, length) in enumerate(zip(self._ranges.offsets,
                                                         self._ranges.lengths)):
                for done in range(0, length, segments.WINDOW_BYTES):
                    self._at = offset + done
                    self._nbytes = min(segments.WINDOW_BYTES, length - done)
                    yield index, done, self._nbytes
            _check_stamp(self._fd, self._sequence)
        finally:
            os.close(self._fd)

    def read_into(self, view: torch.Tensor) -> None:
        segments.read_into(self._fd, self._at, view.view(torch.uint8).numpy().data)

    def pieces(self) -> Iterator[memoryview]:
        """The current range's bytes, one window at a time, each overwritten by the next."""
        if not self._window:  # none for a push read straight into the aggregate
            self._window = bytearray(segments.WINDOW_BYTES)
        return segments.read_windows(self._fd, self._at, self._nbytes, self._window)


def write_pull(record: SessionRecord, store: ParameterStore, version: int,
               specs: tuple[TensorSpec, ...], codec: Codec, name: str,
               chunk_bytes: int) -> Iterable[bytes]:
    """Write the pulled values into the session's pull segment; the answer: one encoded
    PullHeader naming where each tensor's bytes are."""
    _session_segment(record, name, "pull")
    assert codec.spec.name not in DELTA_PULL_CODECS  # those stream (`core.pull`)
    lengths = tuple(codec.max_payload_nbytes(s.numel, s.dtype) for s in specs)
    offsets = tuple(sum(lengths[:i]) for i in range(len(lengths)))
    fd = segments.open_segment(name, writable=True)
    try:
        for _ in encoded_pieces(store, specs, codec, chunk_bytes,
                                lambda index, at, data: segments.write_at(
                                    fd, offsets[index] + at, data)):
            pass
    finally:
        os.close(fd)
    return (serde.encode_pull_header(PullHeader(
        version=version, tensors=specs, shm=ShmRanges(name, offsets, lengths))),)
