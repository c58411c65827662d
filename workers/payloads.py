"""The codec side of the client's hot path: gradient slices out as payloads, pulled chunks in.

Both directions go through the `Codec` interface of `paramserver.codecs`, with one fast path
for `none`, whose payload is the tensor's own bytes: pushes slice the gradient's host bytes
and pulls copy chunks straight into the parameter, without a codec call or extra copy.

Elementwise pull codecs (`PULL_CODECS`: none, fp16, bf16): the server encodes each stored
tensor whole and cuts the encoded bytes into chunks, so a chunk's offset counts encoded
bytes, and a chunk at offset `o` holding `n` bytes carries elements [o / w, (o + n) / w) of
the tensor, where w is the codec's width in bytes per element; every chunk decodes alone.
Delta pull codecs (`DELTA_PULL_CODECS`: topk, qsgd; `DeltaPullDecoder`): each tensor's
chunks make one payload, decoded (qsgd: as its chunks arrive, into a buffer of its own) and
added to the parameter when the stream ends (or, for a whole pull, its raw values copied in).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from paramserver.codecs import DELTA_PULL_CODECS, PULL_CODECS, Codec, ErrorFeedback
from paramserver.codecs.base import Update, add_into, bytes_of, to_dense
from paramserver.codecs.streaming import Payload, StreamDecoder, StreamedPayload
from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.types import CodecSpec, PullHeader, TensorSpec
from workers.routes import Route

log = logging.getLogger(__name__)

RAW = CodecSpec("none")


def is_raw(codec: Codec) -> bool:
    """True when the codec's payload is the tensor's own bytes (`none`)."""
    return codec.spec == RAW


# ---- push ------------------------------------------------------------------------------


def encode_routes(routes: Sequence[Route], gradients: Mapping[str, torch.Tensor],
                  codec: Codec, feedback: ErrorFeedback | None,
                  raw: Mapping[str, memoryview] | None) -> list[Payload]:
    """One payload per route: its slice of the gradient, encoded with the shard's codec.

    `raw` holds each gradient's host bytes; it is needed (and only read) when `codec` is
    `none`. `feedback`, when given, wraps the codec and carries its residuals per slice.
    A codec with a streaming encoder (qsgd, on the CPU, without feedback) gives payloads
    made chunk by chunk while the push sends them (codecs/streaming.py): the gradient
    must stay as it is until the push returns, as it does.
    """
    if is_raw(codec):
        if raw is None:
            raise ValueError("raw gradient bytes are needed to push with codec none")
        return [raw[r.param][r.byte_start:r.byte_start + r.nbytes] for r in routes]
    return [_encode_slice(r, gradients[r.param], codec, feedback) for r in routes]


def _encode_slice(route: Route, gradient: torch.Tensor, codec: Codec,
                  feedback: ErrorFeedback | None) -> Payload:
    """Encode on the gradient's device; only the payload is copied to the host."""
    flat = gradient.detach().reshape(-1)
    item = flat.element_size()
    piece = flat[route.byte_start // item:(route.byte_start + route.nbytes) // item]
    stream = getattr(codec, "stream_encode", None)
    if stream is not None and feedback is None and piece.device.type == "cpu":
        streamed: StreamedPayload = stream(piece)
        return streamed
    encoded = feedback.encode(route.stored.name, piece) if feedback else codec.encode(piece)
    return encoded.cpu().numpy().data


# ---- pull ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where one tensor of a pull lands: a byte range of a parameter's writable values."""

    target: np.ndarray  # the parameter's flat values (raw bytes where numpy lacks the dtype)
    byte_start: int  # the stored slice's first byte within the parameter
    nbytes: int  # the slice's size in the parameter's dtype
    dtype: torch.dtype  # the parameter's dtype, which the codec decodes to
    width: int  # encoded bytes per element


class _ShardPull:
    """What every pull decoder holds: its shard, codec (one of `codecs`) and where the
    pulled tensors land. One decoder serves one pull of one shard (one thread)."""

    def __init__(self, shard: int, codec: Codec, routes: Mapping[str, Route],
                 targets: Mapping[str, np.ndarray], codecs: tuple[str, ...]) -> None:
        if codec.spec.name not in codecs:
            raise FailedPrecondition(f"this decoder cannot pull with codec "
                                     f"{codec.spec.name!r}; use {', '.join(codecs)}")
        self.shard = shard
        self._codec = codec
        self._routes = routes
        self._targets = targets
        self._places: list[_Place] = []

    def _place_of(self, spec: TensorSpec, width: int) -> _Place:
        """Where a pulled tensor lands in the model; FailedPrecondition if it is not ours."""
        route = self._routes.get(spec.name)
        if route is None or route.stored != spec:
            raise FailedPrecondition(f"shard {self.shard} sent {spec.name!r}, which does not "
                                     "match the attached model")
        return _Place(self._targets[route.param], route.byte_start, route.nbytes, spec.dtype,
                      width)


class PullDecoder(_ShardPull):
    """Decodes one shard's pull stream into the model's tensors, in place.

    Give `on_header` and `sink` to `ServerConnection.pull`. `routes` maps the shard's stored
    tensor names to their routes; `targets` maps parameter names to writable flat values
    (`HostMirror.writable_values`). One decoder serves one pull of one shard (one thread).
    """

    def __init__(self, shard: int, codec: Codec, routes: Mapping[str, Route],
                 targets: Mapping[str, np.ndarray]) -> None:
        super().__init__(shard, codec, routes, targets, PULL_CODECS)
        self._raw = is_raw(codec)

    def on_header(self, header: PullHeader) -> None:
        """Map the header's tensors to their places; a retried pull starts over."""
        self._places = [self._place(spec) for spec in header.tensors]

    def _place(self, spec: TensorSpec) -> _Place:
        # Elementwise codecs: the payload bound for one element is its exact width.
        return self._place_of(spec, self._codec.max_payload_nbytes(1, spec.dtype))

    def sink(self, index: int, offset: int, data: memoryview) -> None:
        """Write chunk `data` of tensor `index`, at encoded byte `offset`, into its place."""
        place = self._places[index]
        if self._raw:  # the wire bytes are the parameter's bytes: copy them straight in
            start, values = offset, np.frombuffer(data, np.uint8)
        else:
            start, values = self._decode(place, offset, data)
        if start + values.nbytes > place.nbytes:
            raise InvalidArgument(f"shard {self.shard} sent too many bytes for tensor {index}")
        begin = place.byte_start + start
        place.target.view(np.uint8)[begin:begin + values.nbytes] = values

    def landing(self, index: int, nbytes: int) -> memoryview | None:
        """Under the raw codec, the model's own bytes that tensor `index`'s `nbytes` pulled
        bytes land in, for a reader that writes them there itself (the shared-memory data
        plane: one copy less than `sink`); None: feed `sink` instead."""
        if not self._raw:
            return None
        place = self._places[index]
        if nbytes != place.nbytes:
            raise InvalidArgument(f"shard {self.shard} sent {nbytes} bytes for tensor "
                                  f"{index}, which takes {place.nbytes}")
        flat = place.target.view(np.uint8)
        return flat[place.byte_start:place.byte_start + nbytes].data

    def _decode(self, place: _Place, offset: int,
                data: memoryview) -> tuple[int, np.ndarray]:
        """(byte offset within the slice, decoded bytes in the parameter's dtype)."""
        if offset % place.width or data.nbytes % place.width:
            raise InvalidArgument(f"shard {self.shard} sent a chunk at byte {offset} of "
                                  f"{data.nbytes} bytes, which splits a {place.width}-byte "
                                  "element")
        start = offset // place.width * place.dtype.itemsize
        numel = data.nbytes // place.width
        if numel == 0:
            return start, np.empty(0, np.uint8)
        # A private copy: the received message is read-only, and torch tensors may not alias
        # read-only memory.
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        values = to_dense(self._codec.decode(payload, numel, place.dtype), numel, place.dtype)
        return start, bytes_of(values).numpy()


class DeltaPullDecoder(_ShardPull):
    """Collects one shard's compressed pull and applies it in place when it is whole.

    Each tensor's chunks form one payload: a delta under the pull codec (added to the
    parameter slice: both sides add the same decoded values, so the worker holds exactly the
    server's replica), or, for a whole pull, the slice's raw bytes. Nothing is written
    before `finish()`, so a pull cut short changes no parameter.
    """

    def __init__(self, shard: int, codec: Codec, routes: Mapping[str, Route],
                 targets: Mapping[str, np.ndarray]) -> None:
        super().__init__(shard, codec, routes, targets, DELTA_PULL_CODECS)
        self._header: PullHeader | None = None
        self._payloads: list[bytearray] = []
        self._received: list[int] = []
        self._decoders: list[StreamDecoder | None] = []

    def on_header(self, header: PullHeader) -> None:
        self._header = header
        self._places = [self._place_of(spec, spec.dtype.itemsize) for spec in header.tensors]
        self._payloads = [bytearray() for _ in header.tensors]
        self._received = [0] * len(header.tensors)
        # A delta under a codec that decodes as it arrives (qsgd): each chunk is decoded
        # on arrival, while the next is on the wire, into a buffer of the decoder's own.
        stream = getattr(self._codec, "stream_decoder", None) if header.is_delta else None
        self._decoders = [stream(p.nbytes // p.dtype.itemsize, p.dtype) if stream else None
                          for p in self._places]

    def sink(self, index: int, offset: int, data: memoryview) -> None:
        received = self._received[index]
        if offset != received:
            raise InvalidArgument(f"shard {self.shard}: pull chunk of tensor {index} at byte "
                                  f"{offset}, expected {received}")
        place = self._places[index]
        numel = place.nbytes // place.dtype.itemsize
        bound = max(place.nbytes, self._codec.max_payload_nbytes(numel, place.dtype))
        if received + data.nbytes > bound:
            raise InvalidArgument(f"shard {self.shard} sent too many bytes for tensor {index}")
        self._received[index] = received + data.nbytes
        decoder = self._decoders[index]
        if decoder is not None:
            decoder.feed(data)
        else:
            self._payloads[index] += data

    def finish(self) -> None:
        """Apply the whole pull: add each delta, or copy each tensor's raw values in."""
        assert self._header is not None, "finish() before the pull's header"
        updates = [decoder.finish() if decoder is not None else self._update(place, payload)
                   for place, payload, decoder in zip(self._places, self._payloads,
                                                      self._decoders)]
        for place, update in zip(self._places, updates):
            target = _slice_of(place)
            if isinstance(update, torch.Tensor):
                target.copy_(update)
            else:  # a delta; a sparse one is added where it lands, not densified first
                add_into(target, update)

    def _update(self, place: _Place, payload: bytearray) -> Update | torch.Tensor:
        """The decoded delta, or the raw values, of one tensor, checked before anything is
        written."""
        numel = place.nbytes // place.dtype.itemsize
        raw = torch.frombuffer(payload, dtype=torch.uint8) if payload else torch.empty(
            0, dtype=torch.uint8)
        assert self._header is not None
        if self._header.is_delta:
            return self._codec.decode(raw, numel, place.dtype)
        if raw.numel() != place.nbytes:
            raise InvalidArgument(f"shard {self.shard}: whole pull of {raw.numel()} bytes for "
                                  f"a slice of {place.nbytes}")
        return raw.view(place.dtype)


def _slice_of(place: _Place) -> torch.Tensor:
    """The parameter slice a place names, as a writable torch view of its dtype."""
    raw = torch.from_numpy(place.target.view(np.uint8))
    return raw[place.byte_start:place.byte_start + place.nbytes].view(place.dtype)


def buffers_pushed(asked: bool | None, rank: int, push_codecs: Sequence[Codec]) -> bool:
    """Whether a worker pushes the model's buffers: rank 0 unless told otherwise, and never
    through a compressing codec, which would sparsify or quantize values that are not
    gradients."""
    wanted = rank == 0 if asked is None else asked
    if wanted and not all(is_raw(c) for c in push_codecs):
        log.warning("model buffers (BatchNorm statistics) are not pushed with push codec %s: "
                    "push with codec none to keep them on the servers", push_codecs[0].spec)
        return False
    return wanted
