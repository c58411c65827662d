"""A worker's side of the shared-memory data plane (issue #14; docs/wire.md 5g).

Asked for (`attach(..., shm=True)`, `ParameterClient(shm=True)`, `paramserver worker
--shm`), a connection creates two segments in /dev/shm (`paramserver/shm/segments.py`):
one its pushes are written into, one the server writes its pulls into, and offers them in
its handshake with a random token written at the start of the push segment. A server
that runs with `--shm-data-plane` and finds the token (the same host, the same user)
accepts; any other answer keeps this connection on the gRPC streams (logged), and the
segments are removed at once.

Accepted, a push writes its payloads into the push segment and sends the header alone,
naming their byte ranges; a pull asks for its values in the pull segment and reads them
from the ranges its header names, into the same sink a streamed pull feeds. The segments
are created once per connection, reused every step and removed at `close()` (and at
interpreter exit, for a worker that never closes).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence

from paramserver.codecs.streaming import Payload, payload_bytes
from paramserver.errors import InvalidArgument
from paramserver.shm import segments
from paramserver.shm.records import ShmOffer, ShmRanges
from paramserver.types import PullHeader, Session

log = logging.getLogger(__name__)

# (index into the pull header's tensors, byte offset, payload view), as a streamed pull's
ChunkSink = Callable[[int, int, memoryview], None]
# (index into the pull header's tensors, its byte count) -> where they belong, or None
Landing = Callable[[int, int], memoryview | None]
WRITE_BYTES = 16 << 20  # bytes of a streamed payload made and written at a time


def _remove(names: tuple[str, ...], fds: tuple[int, ...], owner: int) -> None:
    if os.getpid() != owner:  # a forked child exiting normally: the segments are not its
        return
    for name, fd in zip(names, fds):
        segments.remove_segment(name)
        try:
            os.close(fd)
        except OSError:
            pass


class ShmSegments:
    """One connection's push and pull segments. Not thread-safe: one push and one pull at
    a time, as one connection sends them (`_lock` only guards `close`)."""

    def __init__(self) -> None:
        self.push_segment, self._push_fd = segments.create_segment()
        try:
            self.pull_segment, self._pull_fd = segments.create_segment()
        except OSError:
            _remove((self.push_segment,), (self._push_fd,), os.getpid())
            raise
        self._finalizer = weakref.finalize(self, _remove, (self.push_segment, self.pull_segment),
                                           (self._push_fd, self._pull_fd), os.getpid())
        self._window = bytearray(segments.WINDOW_BYTES)
        self._lock = threading.Lock()
        self.offer = self.renew_offer()

    def renew_offer(self) -> ShmOffer:
        """A new token at the start of the push segment (a push since the last handshake
        wrote over it), and the offer that names it."""
        token = os.urandom(segments.TOKEN_BYTES)
        segments.write_at(self._push_fd, 0, token)
        self.offer = ShmOffer(self.push_segment, self.pull_segment, token)
        return self.offer

    def write_push(self, payloads: Sequence[Payload], sequence: int = 0) -> ShmRanges:
        """Write the payloads one after another into the push segment, after the stamp of
        the push's `sequence` (written first: a server still reading an abandoned earlier
        push then sees the stamp change and refuses it); their ranges."""
        segments.write_stamp(self._push_fd, sequence)
        offsets, lengths, at = [], [], segments.PAYLOAD_AT
        for payload in payloads:
            offsets.append(at)
            lengths.append(payload.nbytes)
            for start in range(0, payload.nbytes, WRITE_BYTES):
                end = min(start + WRITE_BYTES, payload.nbytes)
                segments.write_at(self._push_fd, at + start, payload_bytes(payload, start, end))
            at += payload.nbytes
        return ShmRanges(self.push_segment, tuple(offsets), tuple(lengths))

    def read_pull(self, ranges: ShmRanges, tensors: int, sink: ChunkSink,
                  landing: Landing | None = None) -> None:
        """Each tensor's bytes from the pull segment: straight into `landing(index,
        nbytes)` where it names the memory they belong in, else fed to `sink` in windows,
        as chunks would be."""
        if (ranges.segment != self.pull_segment or len(ranges.offsets) != tensors
                or len(ranges.lengths) != tensors):
            raise InvalidArgument(f"the pull's header names segment {ranges.segment!r} with "
                                  f"{len(ranges.offsets)} ranges for {tensors} tensors; "
                                  f"expected this connection's {self.pull_segment!r}")
        for index, (offset, length) in enumerate(zip(ranges.offsets, ranges.lengths)):
            into = landing(index, length) if landing is not None else None
            if into is not None:
                segments.read_into(self._pull_fd, offset, into)
                continue
            done = 0
            for data in segments.read_windows(self._pull_fd, offset, length, self._window):
                sink(index, done, data)
                done += data.nbytes

    def close(self) -> None:
        """Remove both segments (idempotent)."""
        with self._lock:
            self._finalizer()


def offered(current: ShmSegments | None, wanted: bool) -> ShmSegments | None:
    """The segments to offer in a handshake: the connection's own (a rejoin offers them
    again), new ones, or None (not asked for, or no usable /dev/shm here)."""
    if current is not None:
        current.renew_offer()
        return current
    if not wanted:
        return None
    if not segments.available():
        log.info("no writable %s on this host: gRPC streams", segments.SHM_DIR)
        return None
    try:
        return ShmSegments()
    except OSError as error:
        log.info("cannot create shared-memory segments (%s): gRPC streams", error)
        return None


def accepted(current: ShmSegments | None, session: Session,
             address: str) -> ShmSegments | None:
    """The segments to use after a handshake: kept when the server accepted them, else
    removed (the connection stays on the gRPC streams)."""
    if current is None or session.shm_data_plane:
        if current is not None:
            log.info("%s: streamed pushes and pulls go through shared memory (Step calls "
                     "of a small model carry their bytes as before)", address)
        return current
    log.info("%s did not accept the shared-memory data plane (another host, or no "
             "--shm-data-plane): gRPC streams", address)
    current.close()
    return None


def read_pulled(current: ShmSegments | None, header: PullHeader, sink: ChunkSink) -> PullHeader:
    """A pull's `header`, once the values it left in shared memory reached `sink`."""
    if header.shm is not None:
        if current is None:
            raise InvalidArgument("the server answered a pull through shared memory, which "
                                  "this connection did not ask for")
        # A PullDecoder's sink (raw codec) lets the bytes be read straight into the model.
        landing = getattr(getattr(sink, "__self__", None), "landing", None)
        current.read_pull(header.shm, len(header.tensors), sink, landing)
    return header


def close_segments(current: ShmSegments | None) -> None:
    if current is not None:
        current.close()
