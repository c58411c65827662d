"""Pushes added to the step's aggregate chunk by chunk, without a staging copy (issue #14).

A sync push whose codec decodes chunk by chunk (`none`, `fp16`, `bf16`: each element is
its own bytes) is not staged whole before it is added: each chunk passes checks 10-12 of
`intake.py` (in order and without gaps, within the tensor's size, decoded, finite) and is
then added at once into the open step's one aggregation buffer. The server then holds the
parameters, the optimizer state and one aggregate, however many workers push at once.

Over the shared-memory data plane the chunks are not even copied: where no push wrote the
sum yet (the step's first push) and no other push is being received (the read holds the
policy's lock), each range is read from the segment straight into the sum and checked
there; a range refused then leaves those elements unwritten, as before.

The rule that keeps this exact (docs/wire.md, "Push"): whatever `intake.py` refuses before a
push's first chunk is added changes nothing, as for a staged push. A push that fails after
its first add (a later chunk refused, the stream broken or cancelled, its deadline passed)
discards the step's aggregate: nothing is applied, and every worker whose push it held is
answered ABORTED with a message starting `step discarded: ` (its waiting pull, or its push
in flight) and pushes the same step again, as the worker client does by itself. So a step is
applied once, with every gradient.

Staged as before (`intake.py`): pushes in parts (their loss scale and, weighted, their
`num_samples` only come with the closing part, after the earlier parts would have been
added), with a loss scale or found inf/NaN, with model buffers, other codecs (a top-k or
qsgd payload decodes whole), and the modes other than sync.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from paramserver.codecs import Codec
from paramserver.codecs.dense import Cast, Raw
from paramserver.errors import InvalidArgument
from paramserver.server.assembly import chunks_of
from paramserver.server.policies.base import StreamedPush
from paramserver.server.push_checks import all_finite
from paramserver.types import BUFFER_PREFIX, CodecSpec, PushHeader, StepOptions, TensorSpec
from paramserver.wire import Chunk

# A chunk's values view the received message's bytes, which they only read.
warnings.filterwarnings("ignore", message="The given buffer is not writable",
                        category=UserWarning, module=__name__)


def wire_dtypes(header: PushHeader, codec: Codec) -> list[torch.dtype] | None:
    """Per tensor, the type its payload's elements travel in, when the push may be added
    chunk by chunk (a single part, no loss scale or inf/NaN found, no model buffers, an
    elementwise codec); else None."""
    options = header.options or StepOptions()
    if (header.more_parts or options.found_inf or options.grad_scale != 1.0
            or any(s.name.startswith(BUFFER_PREFIX) for s in header.tensors)):
        return None
    if isinstance(codec, Raw):
        return [s.dtype for s in header.tensors]
    if isinstance(codec, Cast):
        return [codec.wire_dtype] * len(header.tensors)
    return None


class ChunkDecoder:
    """Checks 10-12 of `intake.py` on each chunk of one push, then its values.

    A chunk need not hold whole elements (the protocol does not ask it to): the bytes of a
    split element wait for the next chunk of the tensor."""

    def __init__(self, specs: Sequence[TensorSpec], wires: Sequence[torch.dtype],
                 codec: CodecSpec) -> None:
        self._codec = codec
        self._specs = tuple(specs)
        self._wires = tuple(wires)
        self._received = [0] * len(self._specs)
        self._carry = [b""] * len(self._specs)

    def claim(self, tensor: int, offset: int, nbytes: int) -> tuple[TensorSpec, torch.dtype]:
        """Checks 10-11 on a chunk of `nbytes` at byte `offset` of tensor index `tensor`."""
        if tensor >= len(self._specs):
            raise InvalidArgument(f"chunk for tensor index {tensor}, but the header "
                                  f"lists {len(self._specs)} tensors")
        spec, wire = self._specs[tensor], self._wires[tensor]
        expected, limit = self._received[tensor], spec.numel * wire.itemsize
        if offset != expected:
            raise InvalidArgument(f"tensor {spec.name!r}: chunk at byte {offset}, expected "
                                  f"{expected} (chunks must be in order, without gaps)")
        end = offset + nbytes
        if end > limit:
            raise InvalidArgument(f"payload larger than declared: tensor {spec.name!r} takes "
                                  f"at most {limit} bytes but a chunk ends at byte {end}")
        self._received[tensor] = end
        return spec, wire

    def decode(self, chunk: Chunk) -> tuple[TensorSpec, int, torch.Tensor] | None:
        """(tensor, first element, values in the tensor's dtype), or None: no whole element."""
        spec, wire = self.claim(chunk.tensor, chunk.offset, chunk.data.nbytes)
        return self._values(chunk.tensor, spec, wire, chunk.offset, chunk.data)

    def _values(self, tensor: int, spec: TensorSpec, wire: torch.dtype, expected: int,
                data: memoryview) -> tuple[TensorSpec, int, torch.Tensor] | None:
        carry = self._carry[tensor]
        data = memoryview(carry + bytes(data)) if carry else data
        whole = data.nbytes - data.nbytes % wire.itemsize
        self._carry[tensor] = bytes(data[whole:]) if whole < data.nbytes else b""
        if not whole:
            return None
        values = torch.frombuffer(data[:whole], dtype=wire)  # read only, never written
        if wire != spec.dtype:
            values = values.to(spec.dtype)
        require_finite_chunk(spec, values)
        return spec, (expected - len(carry)) // wire.itemsize, values

    def read_direct(self, push: StreamedPush, source: DirectSource) -> None:
        """Checks 10-12 on each range `source` names, read straight into the step's
        aggregate where no push wrote yet (`StreamedPush.read`: one copy less), else read
        and added as a chunk. Only where the push travels in the tensors' own dtypes."""
        for tensor, offset, nbytes in source.ranges():
            spec, wire = self.claim(tensor, offset, nbytes)

            def fill(view: torch.Tensor, spec: TensorSpec = spec) -> None:
                source.read_into(view)
                require_finite_chunk(spec, view)
            if not (self._carry[tensor] or nbytes % wire.itemsize) and push.read(
                    spec.name, offset // wire.itemsize, nbytes // wire.itemsize, fill):
                continue
            for data in source.pieces():  # read, checked and added as chunks
                decoded = self._values(tensor, spec, wire, offset, data)
                offset += data.nbytes
                if decoded is not None:
                    push.add(spec.name, decoded[1], decoded[2])

    def finish(self) -> None:
        """Every tensor arrived whole (worded as a staged push's decoding would say)."""
        for spec, wire, received in zip(self._specs, self._wires, self._received):
            if received != spec.numel * wire.itemsize:
                raise InvalidArgument(
                    f"tensor {spec.name!r}: payload does not decode under codec {self._codec}: "
                    f"truncated stream: {self._codec.name} payload has {received} of "
                    f"{spec.numel * wire.itemsize} bytes")


@runtime_checkable
class DirectSource(Protocol):
    """A push's payload that can be read into memory the server chooses (the shared-memory
    data plane: `shm_plane.SegmentReader`): whole elements of each tensor, in order."""

    def ranges(self) -> Iterator[tuple[int, int, int]]:
        """(tensor index, byte offset in its payload, bytes), each read before the next."""

    def read_into(self, view: torch.Tensor) -> None:
        """The current range's bytes into `view` (as many bytes as it holds)."""

    def pieces(self) -> Iterator[memoryview]:
        """The current range's bytes, a window at a time, each overwritten by the next."""


def require_finite_chunk(spec: TensorSpec, values: torch.Tensor) -> None:
    if not all_finite(values):
        raise InvalidArgument(f"tensor {spec.name!r}: the update holds NaN or infinite "
                              "values; nothing was applied")


def add_in_place(push: StreamedPush, header: PushHeader, codec: Codec,
                 wires: Sequence[torch.dtype], stream: Iterable[object]) -> None:
    """Check and add every chunk of the push; on any failure, `push.abort()` (which discards
    the step's aggregate once anything was added) and raise."""
    decoder = ChunkDecoder(header.tensors, wires, codec.spec)
    try:
        if isinstance(stream, DirectSource) and list(wires) == [s.dtype for s in header.tensors]:
            decoder.read_direct(push, stream)
            decoder.finish()
            return
        for chunk in chunks_of(stream, "push"):
            decoded = decoder.decode(chunk)
            if decoded is not None:
                spec, start, values = decoded
                push.add(spec.name, start, values)
        decoder.finish()
    except BaseException:
        push.abort()
        raise
