"""The messages of a Pull: a header, then each tensor's chunks in the session's pull codec."""

from __future__ import annotations

from collections.abc import Iterator

from paramserver import serde, wire
from paramserver.codecs import Codec
from paramserver.errors import InvalidArgument
from paramserver.server.pull_streams import Served
from paramserver.server.store import ParameterStore
from paramserver.transport import chunk_ranges
from paramserver.types import PullHeader, TensorSpec


def pull_messages(store: ParameterStore, version: int, specs: tuple[TensorSpec, ...],
                  codec: Codec, chunk_bytes: int) -> Iterator[bytes]:
    """Encoded PullResponse messages for `specs` at `version`.

    Pull codecs are elementwise (none, fp16, bf16), so each chunk is a range of elements
    encoded on its own and its offset counts encoded bytes. Each chunk is copied under the
    store lock, so it never mixes two versions; `none` sends the parameter bytes as they are.
    """
    yield serde.encode_pull_header(PullHeader(version=version, tensors=specs))
    raw = codec.spec.name == "none"
    for index, spec in enumerate(specs):
        wire_item = codec.max_payload_nbytes(1, spec.dtype)
        per_chunk = max(1, chunk_bytes // wire_item)
        flat = store.params[spec.name].view(-1)
        as_bytes = store.byte_view(spec.name) if raw else None  # one view per tensor
        for start, end in chunk_ranges(spec.numel, per_chunk):
            with store.lock:
                data = (as_bytes[start * wire_item:end * wire_item] if as_bytes is not None
                        else memoryview(codec.encode(flat[start:end]).numpy().data))
                message = wire.encode_chunk(index, start * wire_item, data)
            yield message


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
