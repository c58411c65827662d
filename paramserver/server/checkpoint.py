"""Crash-safe checkpoints of one shard's state: written aside and renamed, verified on load.

A checkpoint file is a fixed header followed by a payload:

    magic (8 bytes) | format version (u32) | payload length (u64) | SHA-256 of payload (32 bytes)

all little-endian. The payload is a `torch.save` of a dict of tensors and primitives only, so
`torch.load(..., weights_only=True)` reads it and loading a checkpoint never runs pickled
code. Layout and plan travel in it as protobuf bytes from `paramserver.serde`; `extra` as JSON.

Saving follows the POSIX recipe for atomic replacement: write a uniquely named temp file,
fsync it, rename it to its final name, fsync the directory so the rename itself survives a
power cut. A final name therefore only ever holds a complete file; a crash mid-save leaves at
most a `*.tmp` file, which is never read (and is safe to delete when no save is running).
Damage that happens anyway (disk errors, a bad copy) fails the checksum: `load_latest` skips
such a file with a warning and falls back to the one before. So does any entry that is not
a regular file (a directory or FIFO under a checkpoint's name is never opened for reading).

With a key (`--checkpoint-key FILE`) the 32-byte digest is HMAC-SHA256(key, payload) and
the format version is 2: a store with a key refuses unsigned files and files signed with
another key, so a forged or tampered checkpoint is never loaded; a store without a key
refuses signed files rather than trust them unchecked.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from paramserver import serde
from paramserver.sharding import PartitionPlan
from paramserver.types import ModelLayout

log = logging.getLogger(__name__)

MAGIC = b"PSCKPT\r\n"  # the CR LF is mangled by text-mode copies, as in PNG's signature
FORMAT_VERSION = 1  # digest: SHA-256 of the payload
SIGNED_FORMAT_VERSION = 2  # digest: HMAC-SHA256 of the payload under the store's key
MIN_KEY_BYTES = 16
TEMP_SUFFIX = ".tmp"
_HEADER = struct.Struct("<8sIQ32s")
_NAME = re.compile(r"shard-(\d{4,})-v(\d{12,})\.ckpt")
# Called with the open temp file and the bytes about to be written, before writing them:
# the injection point for tests that crash a save halfway. Production passes none.
BeforeWrite = Callable[[IO[bytes], bytes], None]


@dataclass
class ShardState:
    """Everything one shard needs to resume where it stopped."""

    version: int
    layout: ModelLayout  # this shard's stored tensors
    plan: PartitionPlan  # how the whole model is split
    shard_index: int
    params: dict[str, torch.Tensor]  # CPU tensors by name, in layout order
    optimizer: dict[str, Any]  # a torch.optim.Optimizer.state_dict()
    extra: dict[str, Any]  # plain JSON data; comes back as json.loads returns it
    # Row-sparse tables (issue #16): `TableService.snapshot()`, tensors and primitives.
    tables: dict[str, Any] = field(default_factory=dict)


class CorruptCheckpoint(Exception):
    """A checkpoint file that does not verify; the message says why."""


class RefusedCheckpoint(ValueError):
    """A valid checkpoint that this server's settings must not resume (e.g. a DP-FedAvg
    privacy ledger spent under another --dp-delta); the message names the mismatch."""


def checkpoint_name(shard_index: int, version: int) -> str:
    """'shard-0003-v000000001200.ckpt': zero-padded, so names sort like versions."""
    return f"shard-{shard_index:04d}-v{version:012d}.ckpt"


class CheckpointStore:
    """The checkpoint files in one directory: atomic saves, newest-valid loads, pruning.

    Pass `shard_index` when several shards share the directory: the store then sees only that
    shard's files. Without it the store sees every checkpoint file, and `load_latest` refuses
    a directory holding more than one shard rather than guess which to resume.
    Concurrent saves (a periodic one and one on SIGTERM) are safe without a lock: each writes
    its own temp file, and the last rename wins.
    """

    def __init__(self, directory: Path, keep: int = 3, *, shard_index: int | None = None,
                 before_write: BeforeWrite | None = None, key: bytes | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a checkpoint key needs at least {MIN_KEY_BYTES} bytes")
        self.key = key
        self.directory = Path(directory)
        self.keep = keep
        self.shard_index = shard_index
        self._before_write = before_write
        self.directory.mkdir(parents=True, exist_ok=True)

    def paths(self) -> list[Path]:
        """Complete checkpoint files (final names; contents not checked), newest first."""
        return [path for _, path in self._listing()]

    def save(self, state: ShardState) -> Path:
        """Write `state` atomically and return its path; then keep the newest `keep` files of
        that shard (never deleting the one just written). `before_write`, if given, runs
        on the open temp file first (tests use it to die mid-write).

        `state` must be a consistent snapshot (copied under the store's lock): tensors are
        written as they are while this runs. ValueError, before anything is written, for a
        state that could not be restored.
        """
        if self.shard_index not in (None, state.shard_index):
            raise ValueError(f"this store holds shard {self.shard_index}, "
                             f"not shard {state.shard_index}")
        body = encode_state(state)
        header = _HEADER.pack(MAGIC, *_digest(body, self.key))
        final = self.directory / checkpoint_name(state.shard_index, state.version)
        fd, temp = tempfile.mkstemp(prefix=final.name + ".", suffix=TEMP_SUFFIX,
                                    dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                if self._before_write is not None:
                    self._before_write(out, header + body)
                out.write(header)
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)
        self._prune(state.shard_index, written=final)
        return final

    def load_latest(self) -> ShardState | None:
        """The newest checkpoint that verifies, or None when there is none.

        Each file skipped (torn, corrupt, unreadable, not a regular file) is logged as a
        warning naming it and why. Files named for other shards are skipped likewise
        unless one of them verifies: a directory holding valid checkpoints of several
        shards is refused (ValueError) rather than guessed at.
        """
        listing = self._listing()
        for index, (_, path) in enumerate(listing):
            state = self._try_read(path)
            if state is not None:
                rivals = [(shard, p) for (_, shard), p in listing[index + 1:]
                          if shard != state.shard_index]
                self._refuse_other_shards(state.shard_index, rivals)
                return state
        return None

    def _try_read(self, path: Path) -> ShardState | None:
        try:
            return read_checkpoint(path, self.key)
        except CorruptCheckpoint as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
        except FileNotFoundError:
            pass  # pruned by a concurrent save since we listed it
        except OSError as exc:  # unreadable: permissions, I/O error
            log.warning("skipping checkpoint %s: %s", path, exc)
        return None

    def _refuse_other_shards(self, shard_index: int,
                             others: list[tuple[int, Path]]) -> None:
        """ValueError when any of `others` ((shard, path) of other shards' files) is a
        valid checkpoint."""
        for shard, path in others:
            if self._try_read(path) is not None:
                raise ValueError(
                    f"{self.directory} holds checkpoints of shards "
                    f"{sorted({shard_index, shard})}: pass shard_index to CheckpointStore "
                    "to pick one, or give each shard its own directory")

    def _listing(self) -> list[tuple[tuple[int, int], Path]]:
        """((version, shard), path) of this store's checkpoint files, newest first."""
        found = []
        for path in self.directory.iterdir():
            if _NAME.fullmatch(path.name):
                if not path.is_file():  # a directory, FIFO, socket: never opened
                    log.warning("skipping %s: not a regular file", path)
                    continue
                shard, version = _parse_name(path)
                if self.shard_index in (None, shard):
                    found.append(((version, shard), path))
        return sorted(found, reverse=True)

    def _prune(self, shard_index: int, written: Path) -> None:
        # Files newer than `written` exist only when they failed to load; they still count,
        # so the good file just written must be spared explicitly.
        mine = [path for (_, shard), path in self._listing() if shard == shard_index]
        for old in mine[self.keep:]:
            if old != written:
                old.unlink(missing_ok=True)  # a concurrent save may have pruned it already


def _digest(body: bytes, key: bytes | None) -> tuple[int, int, bytes]:
    """(format version, length, digest) of a payload, signed when there is a key."""
    if key is None:
        return FORMAT_VERSION, len(body), hashlib.sha256(body).digest()
    return SIGNED_FORMAT_VERSION, len(body), hmac.new(key, body, hashlib.sha256).digest()


def _read_regular(path: Path) -> bytes:
    """A regular file's bytes; CorruptCheckpoint for anything else, without blocking (a FIFO
    is opened non-blocking and refused before any read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptCheckpoint("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def read_checkpoint(path: Path, key: bytes | None = None) -> ShardState:
    """Read and verify one checkpoint file (its HMAC under `key`, when given);
    CorruptCheckpoint says what is wrong with it."""
    try:
        data = _read_regular(path)
    except IsADirectoryError:
        raise CorruptCheckpoint("a directory, not a checkpoint file") from None
    body = _verified_body(data, key)
    try:
        state = decode_state(body)
    except Exception as exc:  # a verified payload that will not decode is as unusable
        raise CorruptCheckpoint(f"unreadable payload: {type(exc).__name__}: {exc}") from exc
    if _parse_name(path) != (state.shard_index, state.version):
        raise CorruptCheckpoint(f"holds shard {state.shard_index} version {state.version}, "
                                "not what its name says")
    return state


def _verified_body(data: bytes, key: bytes | None) -> bytes:
    """The payload of a checkpoint file's bytes, once its header and digest verify."""
    if len(data) < _HEADER.size:
        raise CorruptCheckpoint(f"short file: {len(data)} bytes, the header alone is "
                                f"{_HEADER.size}")
    magic, fmt, length, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint(f"bad magic bytes {magic!r}, not a checkpoint")
    if fmt not in (FORMAT_VERSION, SIGNED_FORMAT_VERSION):
        raise CorruptCheckpoint(f"format version {fmt}; this code reads {FORMAT_VERSION} "
                                f"and {SIGNED_FORMAT_VERSION}")
    if key is not None and fmt != SIGNED_FORMAT_VERSION:
        raise CorruptCheckpoint("unsigned, and --checkpoint-key requires signed checkpoints")
    if key is None and fmt == SIGNED_FORMAT_VERSION:
        raise CorruptCheckpoint("signed: start with its --checkpoint-key to load it")
    body = data[_HEADER.size:]
    if len(body) != length:
        raise CorruptCheckpoint(f"payload is {len(body)} bytes, the header says {length} "
                                "(torn or truncated write)")
    if not hmac.compare_digest(_digest(body, key)[2], checksum):
        raise CorruptCheckpoint("payload checksum mismatch" if key is None else
                                "HMAC mismatch: forged, tampered, or signed with another key")
    return body


def encode_state(state: ShardState) -> bytes:
    _check_restorable(state)
    buffer = io.BytesIO()
    torch.save({
        "version": state.version,
        "shard_index": state.shard_index,
        "layout": serde.layout_to_bytes(state.layout),
        "plan": serde.plan_to_bytes(state.plan),
        "params": {name: _compact(t) for name, t in state.params.items()},
        "optimizer": state.optimizer,
        "extra": json.dumps(state.extra),
        "tables": state.tables,
    }, buffer)
    return buffer.getvalue()


def decode_state(body: bytes) -> ShardState:
    payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    plan = serde.plan_from_bytes(payload["plan"])
    if plan is None:
        raise ValueError("no partition plan recorded")
    return ShardState(
        version=int(payload["version"]),
        layout=serde.layout_from_bytes(payload["layout"]) or ModelLayout(()),  # may be empty
        plan=plan,
        shard_index=int(payload["shard_index"]),
        params=dict(payload["params"]),
        optimizer=payload["optimizer"],
        extra=json.loads(payload["extra"]),
        tables=payload.get("tables", {}),
    )


def _check_restorable(state: ShardState) -> None:
    """Refuse at save time what could not be restored, rather than find out on restart."""
    if state.version < 0 or state.shard_index < 0:
        raise ValueError(f"version {state.version} and shard index {state.shard_index} "
                         "must not be negative")
    names = [spec.name for spec in state.layout.tensors]
    if list(state.params) != names:
        raise ValueError(f"params {list(state.params)} do not match the layout's tensors {names}")
    for spec in state.layout.tensors:
        param = state.params[spec.name]
        if (tuple(param.shape), param.dtype) != (spec.shape, spec.dtype):
            raise ValueError(f"param {spec.name!r} is {tuple(param.shape)} {param.dtype}, "
                             f"the layout says {spec.shape} {spec.dtype}")


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a compact copy when it views a larger storage (torch.save writes storages
    whole, so a view into a flat buffer would save the entire buffer)."""
    tensor = tensor.detach()
    if (tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.nbytes):
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _parse_name(path: Path) -> tuple[int, int]:
    """(shard index, version) from a checkpoint file's name."""
    match = _NAME.fullmatch(path.name)
    assert match is not None, path
    return int(match[1]), int(match[2])


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: POSIX only promises that once the directory itself is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
