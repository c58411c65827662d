"""The messages of a Pull: a header, then each tensor's chunks in the session's pull codec."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from paramserver import serde, wire
from paramserver.codecs import Codec
from paramserver.errors import InvalidArgument, NotFound
from paramserver.server.pull_streams import Served
from paramserver.server.store import ParameterStore
from paramserver.transport import chunk_ranges
from paramserver.types import BUFFER_PREFIX, ModelLayout, PullHeader, TensorSpec

T = TypeVar("T")


def pull_messages(store: ParameterStore, version: int, specs: tuple[TensorSpec, ...],
                  codec: Codec, chunk_bytes: int) -> Iterator[bytes]:
    """Encoded PullResponse messages for `specs` at `version`: the header, then the
    chunks of `encoded_pieces`."""
    yield serde.encode_pull_header(PullHeader(version=version, tensors=specs))
    yield from encoded_pieces(store, specs, codec, chunk_bytes, wire.encode_chunk)


def encoded_pieces(store: ParameterStore, specs: tuple[TensorSpec, ...], codec: Codec,
                   chunk_bytes: int, take: Callable[[int, int, memoryview], T]) -> Iterator[T]:
    """`take(tensor index, byte offset, bytes)` of each piece of the pulled values.

    Pull codecs are elementwise (none, fp16, bf16), so each piece is a range of elements
    encoded on its own and its offset counts encoded bytes. Each piece is taken under the
    store lock, so it never mixes two versions; `none` takes the parameter bytes as they
    are (`take` must copy them before it returns).
    """
    raw = codec.spec.name == "none"
    for index, spec in enumerate(specs):
        wire_item = codec.max_payload_nbytes(1, spec.dtype)
        per_chunk = max(1, chunk_bytes // wire_item)
        as_bytes = store.byte_view(spec.name) if raw else None  # one view per tensor
        param = store.params[spec.name]
        for start, end in chunk_ranges(spec.numel, per_chunk):
            with store.lock:
                data = (as_bytes[start * wire_item:end * wire_item] if as_bytes is not None
                        else memoryview(codec.encode(param.view(-1)[start:end]).numpy().data))
                taken = take(index, start * wire_item, data)
            yield taken


class EncodedPulls:
    """The newest encoded small pull, kept for the next worker that pulls the same: at W
    workers a sync step's parameters are encoded once, not W times (issue #14; a 40 KB
    step's pull encode was a fifth of the server's time per Step call).

    Only pulls of at most `max_bytes` (--max-step-call-bytes) are kept, so the entry costs
    at most that. A kept pull is encoded whole under the store lock, so it is exactly its
    version. Not kept: version 0 (a fresh shard may still be replaced by SetState at that
    version) and pulls with buffers (a push overwrites those without a new version).
    `_lock` guards the one entry.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._messages: tuple[bytes, ...] = ()

    def messages(self, store: ParameterStore, version: int, specs: tuple[TensorSpec, ...],
                 codec: Codec, chunk_bytes: int) -> Iterator[bytes]:
        """`pull_messages(...)`, from the kept entry when it is this very pull."""
        key = (version, codec.spec, specs, chunk_bytes)
        with self._lock:  # a kept pull passed the checks below when it was kept
            if key == self._key:
                return iter(self._messages)
        if (version <= 0 or sum(s.nbytes for s in specs) > self._max_bytes
                or any(s.name.startswith(BUFFER_PREFIX) for s in specs)):
            return pull_messages(store, version, specs, codec, chunk_bytes)
        with store.lock:  # the whole pull at one version (async may have moved on)
            current = store.version
            messages = tuple(pull_messages(store, current, specs, codec, chunk_bytes))
        with self._lock:
            self._key, self._messages = (current, *key[1:]), messages
        return iter(messages)


def delta_pull_messages(served: Served, specs: tuple[TensorSpec, ...],
                        chunk_bytes: int) -> Iterator[bytes]:
    """Encoded PullResponse messages of a compressed pull: a header, then each tensor's
    payload (a delta under the pull codec, or the raw values) in chunks of payload bytes,
    each made (encoded, the first time any pull reads it) as it is taken."""
    yield serde.encode_pull_header(PullHeader(version=served.version, tensors=specs,
                                              delta_from=served.delta_from))
    for index, spec in enumerate(specs):
        for start, data in served.payloads[spec.name].chunks(chunk_bytes):
            yield wire.encode_chunk(index, start, data)


def pulled_specs(layout: ModelLayout, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    """The tensors a pull names (all of them when none), in its order; NotFound for a name
    the model does not have."""
    if not names:
        return layout.tensors
    by_name = layout.by_name()
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NotFound(f"unknown tensors {missing}")
    return tuple(by_name[n] for n in names)


def check_pull_codec(codec: Codec, specs: tuple[TensorSpec, ...]) -> None:
    """The 16-bit pull codecs carry floating-point tensors only: refuse the others up front
    instead of failing halfway through the stream."""
    if codec.spec.name == "none":
        return
    wrong = [s.name for s in specs if not s.dtype.is_floating_point]
    if wrong:
        raise InvalidArgument(f"tensors {wrong[:8]} are not floating-point, and this "
                              f"session's pull codec {codec.spec} carries only floating-point "
                              "values: pull them by name from a session with pull codec none")
