"""qsgd made and decoded a piece at a time (issue #14): the same bytes and values as whole."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from paramserver.codecs import make_codec
from paramserver.codecs.base import CodecError
from paramserver.codecs.qsgd import CHUNK, QSGD
from paramserver.codecs.streaming import StreamedPayload
from paramserver.optimizer import OptimizerConfig
from paramserver.server.pull_streams import PullStream
from paramserver.server.store import ParameterStore
from paramserver.sharding import plan_partition
from paramserver.types import ModelLayout, TensorSpec

SPECS = ["qsgd:bits=8", "qsgd:bits=4", "qsgd:bits=2,bucket=3", "qsgd:bits=8,bucket=1000"]
SIZES = [0, 1, 7, 2 * CHUNK + 5]


def _codec(spec: str) -> QSGD:
    codec = make_codec(spec)
    assert isinstance(codec, QSGD)
    return codec


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("numel", SIZES)
def test_streamed_payload_is_the_encoders_bytes_and_decodes_alike(spec: str,
                                                                  numel: int) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    whole = _codec(spec).encode(x)  # same seed: the same draws
    streamed = _codec(spec).stream_encode(x)
    got = b"".join(bytes(data) for _, data in streamed.chunks(100_003))
    assert got == bytes(whole.numpy())
    decoder = _codec(spec).stream_decoder(numel, torch.float32)
    rng = np.random.default_rng(numel)
    at = 0
    while at < len(got):  # ragged pieces: some split the scales, some split a code byte
        step = int(rng.integers(1, 200_000))
        decoder.feed(memoryview(got[at:at + step]))
        at += step
    expected = _codec(spec).decode(whole, numel, torch.float32).values
    assert torch.equal(decoder.finish().values, expected)


def test_the_piece_hook_sees_every_code_once_in_order() -> None:
    x = torch.randn(2 * CHUNK + 5, generator=torch.Generator().manual_seed(3))
    codec = _codec("qsgd:bits=8")
    added = torch.zeros_like(x)
    starts = []

    def after(start: int, codes: np.ndarray, scales: torch.Tensor) -> None:
        starts.append(start)
        codec.add_codes(added[start:start + codes.size], codes, scales, start)
    payload = codec.stream_encode(x, after=after).complete()
    assert starts == [0, CHUNK, 2 * CHUNK]
    assert torch.equal(added, _codec("qsgd:bits=8").decode(payload, x.numel(),
                                                          torch.float32).values)


def test_concurrent_readers_get_the_same_bytes_made_once() -> None:
    x = torch.randn(3 * CHUNK, generator=torch.Generator().manual_seed(4))
    calls = []

    def after(start: int, codes: np.ndarray, scales: torch.Tensor) -> None:
        calls.append(start)
    streamed = _codec("qsgd:bits=8").stream_encode(x, after=after)
    reads: list[bytes] = [b"", b""]

    def read(slot: int) -> None:
        reads[slot] = b"".join(bytes(d) for _, d in streamed.chunks(65536))
    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert reads[0] == reads[1] == bytes(_codec("qsgd:bits=8").encode(x).numpy())
    assert calls == [0, CHUNK, 2 * CHUNK]


def test_stream_decoder_refuses_bad_scales_extra_bytes_and_a_short_payload() -> None:
    codec = _codec("qsgd:bits=8")
    payload = codec.encode(torch.randn(1000)).numpy().tobytes()
    bad = bytearray(payload)
    bad[0:4] = np.float32(np.nan).tobytes()
    with pytest.raises(CodecError, match="NaN"):
        codec.stream_decoder(1000, torch.float32).feed(memoryview(bytes(bad)))
    with pytest.raises(CodecError, match="larger than declared"):
        codec.stream_decoder(1000, torch.float32).feed(memoryview(payload + b"x"))
    short = codec.stream_decoder(1000, torch.float32)
    short.feed(memoryview(payload[:-1]))
    with pytest.raises(CodecError, match="truncated"):
        short.finish()
    wrong = bytearray(payload)
    wrong[-1] = 255  # 8 bits: codes go to 2 * 127 = 254
    with pytest.raises(CodecError, match="out of range"):
        decoder = codec.stream_decoder(1000, torch.float32)
        decoder.feed(memoryview(bytes(wrong)))
        decoder.finish()


@pytest.mark.parametrize("codec_spec", SPECS)
def test_a_pull_streams_replica_gains_exactly_the_served_delta(codec_spec: str) -> None:
    store = ParameterStore(OptimizerConfig(momentum=0.0))
    spec = TensorSpec("w", (2 * CHUNK + 9,), torch.float32)
    layout = ModelLayout((spec,))
    store.create(layout, {"w": torch.zeros(spec.numel)}, plan_partition(layout, 1), 0)
    stream = PullStream(_codec(codec_spec))
    first = stream.serve(store, (spec,), -1)  # whole: the replica starts as the parameters
    assert first.delta_from == -1
    store.apply({"w": torch.randn(spec.numel, generator=torch.Generator().manual_seed(5))})
    before = stream.replica["w"].clone()
    served = stream.serve(store, (spec,), first.version)
    assert served.delta_from == first.version and isinstance(served.payloads["w"],
                                                             StreamedPayload)
    payload = served.payloads["w"].complete()
    sent = _codec(codec_spec).decode(payload, spec.numel, torch.float32).values
    assert torch.equal(stream.replica["w"], before + sent)
    residual = stream.residual(store)["w"]
    assert float(residual.abs().max()) > 0  # quantised: not exact, but close
    levels = _codec(codec_spec).levels
    assert float(residual.abs().max()) <= float(store.params["w"].abs().max()) / levels + 1e-6
