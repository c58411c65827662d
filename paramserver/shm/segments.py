"""Segments of the shared-memory data plane: files in /dev/shm, read and written with
pread/pwrite, never mapped (issue #14; docs/wire.md section 5g).

A segment is a regular file in /dev/shm (tmpfs: its pages are memory, shared by every
process that opens it) that a worker creates with a random name (`NAME_PREFIX` and 32 hex
digits: 128 unguessable bits), mode 0600, `O_EXCL`, and removes when it closes. The server
only opens segments by names its workers offered, checks that each is a regular file of
its own user that nobody else may read, and never creates one.

Why pread/pwrite and not mmap: a mapped file that another process truncates turns the next
read of a vanished page into SIGBUS, which would kill the server; pread of a shrunk file
returns fewer bytes, which is an error we can answer. The copy pread makes is the one
copy a gRPC message costs too, into a bounded window that is reused (the server's memory
grows by one window, not by the payload), and tmpfs writes grow the file as needed, so no
side has to size a segment in advance.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from paramserver.errors import InvalidArgument, NotFound, PermissionDenied

SHM_DIR = Path("/dev/shm")
NAME_PREFIX = "psm-"
_NAME = re.compile(r"psm-[0-9a-f]{32}")
TOKEN_BYTES = 32
STAMP_AT = 32  # a push segment's bytes 32-39: the sequence of the push it holds (u64 LE)
PAYLOAD_AT = 64  # the first byte a push payload may take (0-63: token and stamp)
WINDOW_BYTES = 4 << 20  # bytes read per pread: bounds the memory a push takes


def available() -> bool:
    """Whether this host has a writable /dev/shm."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK | os.X_OK)


def check_name(name: str) -> None:
    """InvalidArgument unless `name` is `NAME_PREFIX` and 32 lowercase hex digits (no
    path separators, nothing outside /dev/shm, no file we did not name)."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"shared-memory segment name {name[:80]!r} is not "
                              f"{NAME_PREFIX!r} followed by 32 lowercase hex digits")


def create_segment() -> tuple[str, int]:
    """A new segment of this process's user, mode 0600: (name, open read-write fd)."""
    name = NAME_PREFIX + secrets.token_hex(16)
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    return name, fd


def remove_segment(name: str) -> None:
    """Unlink a segment (no error when it is gone already)."""
    check_name(name)
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        pass


def open_segment(name: str, writable: bool) -> int:
    """An fd of an existing segment that is a regular file of this process's user with no
    permission bits for anyone else. InvalidArgument for a bad name, NotFound when there
    is no such segment on this host, PermissionDenied for someone else's file."""
    check_name(name)
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(SHM_DIR / name, flags)
    except FileNotFoundError:
        raise NotFound(f"no shared-memory segment {name!r} on the server's host") from None
    except OSError as error:
        raise PermissionDenied(f"shared-memory segment {name!r}: {error.strerror}") from None
    info = os.fstat(fd)
    if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o077):
        os.close(fd)
        raise PermissionDenied(f"shared-memory segment {name!r} must be a regular file of "
                               "the server's user with mode 0600")
    return fd


def segment_size(fd: int) -> int:
    return os.fstat(fd).st_size


def read_stamp(fd: int) -> int:
    """The sequence of the push a push segment holds (-1: none written)."""
    data = os.pread(fd, 8, STAMP_AT)
    return int.from_bytes(data, "little") if len(data) == 8 else -1


def write_stamp(fd: int, sequence: int) -> None:
    write_at(fd, STAMP_AT, sequence.to_bytes(8, "little"))


def read_windows(fd: int, offset: int, length: int, window: bytearray) -> Iterator[memoryview]:
    """Bytes [offset, offset + length) of a segment, one window at a time: each view is
    overwritten by the next, so the caller must be done with it first. InvalidArgument
    when the segment ends before (it shrank after it was checked)."""
    view = memoryview(window)
    done = 0
    while done < length:
        want = min(len(window), length - done)
        got = os.preadv(fd, [view[:want]], offset + done)
        if got <= 0:
            raise InvalidArgument(f"shared-memory segment ends at byte {offset + done}, "
                                  f"before the {length} bytes at {offset} its header names")
        yield view[:got]
        done += got


def read_into(fd: int, offset: int, into: memoryview) -> None:
    """Fill `into` with the segment's bytes from `offset` (InvalidArgument when it ends
    first)."""
    view = into.cast("B")
    while view.nbytes:
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise InvalidArgument(f"shared-memory segment ends at byte {offset}, "
                                  f"{view.nbytes} bytes short of what its header names")
        view, offset = view[got:], offset + got


def write_at(fd: int, offset: int, data: memoryview | bytes) -> None:
    """All of `data` at `offset` (tmpfs grows the file as needed)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
