"""Pushes decoded as they arrive (issue #14): a push codec with a streaming decoder (qsgd).

Checks 10 and 11 of `intake.py` run chunk by chunk: each chunk is staged in order and within
the codec's size bound as before, and every piece of the payload whose bytes are in is
decoded at once, while the next chunk is on the wire, so only the last piece's decode is
left when the stream ends. The values go into a pooled buffer, which the step's aggregate
adopts as its sum when it is the first push (no copy). Nothing reaches the aggregate before
the whole push decoded: a refused push changes nothing, as when it is decoded whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from paramserver.codecs import Codec, Update
from paramserver.codecs.base import CodecError
from paramserver.errors import InvalidArgument
from paramserver.server.assembly import TensorAssembler, chunks_of
from paramserver.server.buffers import PooledBuffers
from paramserver.types import TensorSpec


def decode_arriving(specs: Sequence[TensorSpec], codec: Codec, limits: Sequence[int],
                    stream: Iterable[object], buffers: PooledBuffers,
                    ) -> dict[str, Update] | None:
    """Each tensor's update, decoded as its chunks arrive; None when the codec has no
    streaming decoder (the caller stages and decodes whole)."""
    make = getattr(codec, "stream_decoder", None)
    if make is None:
        return None
    assembler = TensorAssembler(specs, buffers, limits)
    decoders = [make(s.numel, s.dtype, out=buffers.take(s.numel * 4).view(torch.float32))
                for s in specs]
    index = 0
    try:
        for chunk in chunks_of(stream, "push"):
            assembler.add(chunk)  # 10: in order, without gaps, within the bound
            index = chunk.tensor
            decoders[index].arrived(assembler.received(index))  # 11, piece by piece
        updates = {}
        for index, (spec, decoder) in enumerate(zip(specs, decoders)):
            updates[spec.name] = decoder.finish()
        return updates
    except CodecError as error:
        raise InvalidArgument(f"tensor {specs[index].name!r}: payload does not decode under "
                              f"codec {codec.spec}: {error}") from None
