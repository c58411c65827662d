"""The Step call's messages and the server's kept small pull (issue #14), without a network."""

from __future__ import annotations

import torch

from paramserver import serde, wire
from paramserver.codecs import make_codec
from paramserver.optimizer import OptimizerConfig
from paramserver.proto import paramserver_pb2 as pb
from paramserver.server.pull import EncodedPulls, pull_messages
from paramserver.server.store import ParameterStore
from paramserver.sharding import plan_partition
from paramserver.step_call import StepAnswer, StepCall
from paramserver.types import (
    CodecSpec,
    ModelLayout,
    PullHeader,
    PushHeader,
    PushResult,
    TensorSpec,
)

STEP = serde.RPCS["Step"]
W = TensorSpec("w", (3,), torch.float32)


def test_a_step_call_is_the_push_streams_messages_then_the_pull() -> None:
    header = PushHeader("s", 4, 2, (W,), incarnation=1, sequence=9)
    call = StepCall((header, wire.Chunk(0, 0, memoryview(bytes(range(12))))), 5, ("w",), -1)
    data = STEP.request_to_bytes(call)
    decoded = STEP.request_from_bytes(data)
    assert decoded.push[0] == header and decoded.push[1].data.tobytes() == bytes(range(12))
    assert (decoded.min_version, decoded.tensors, decoded.held_version) == (5, ("w",), -1)
    message = pb.StepRequest.FromString(data)  # and it is a valid StepRequest
    assert message.held_version == -1 and message.chunks[0].data == bytes(range(12))
    assert STEP.request_from_bytes(b"\x0a\x05ab").reason  # truncated: a MalformedMessage


def test_a_step_answer_is_the_pull_streams_messages_then_the_push_answer() -> None:
    pulled = (serde.encode_pull_header(PullHeader(version=7, tensors=(W,))),
              wire.encode_chunk(0, 0, bytes(12)))
    data = STEP.response_to_bytes(StepAnswer(PushResult(7, True, 0, True), pulled))
    answer = STEP.response_from_bytes(data)
    assert answer.push == PushResult(7, True, 0, True)
    assert answer.pull[0] == PullHeader(version=7, tensors=(W,)) and answer.pull[1].data.tobytes() == bytes(12)
    assert pb.StepResponse.FromString(data).push.duplicate
    assert STEP.response_from_bytes(b"".join(pulled)).reason  # no push answer: malformed
    assert STEP.response_from_bytes(data[:-3]).reason  # truncated: malformed


def _store(version: int) -> ParameterStore:
    store = ParameterStore(OptimizerConfig(lr=1.0, momentum=0.0))
    layout = ModelLayout((W,))
    store.create(layout, {"w": torch.arange(3.0)}, plan_partition(layout, 1), 0)
    store.version = version
    return store


def test_a_kept_pull_is_the_pull_of_its_version_and_encoded_once() -> None:
    store, codec = _store(3), make_codec(CodecSpec("none"))
    kept = EncodedPulls(1 << 20)
    first = list(kept.messages(store, 3, (W,), codec, 1024))
    assert first == list(pull_messages(store, 3, (W,), codec, 1024))
    again = list(kept.messages(store, 3, (W,), codec, 1024))
    assert all(a is b for a, b in zip(first, again))  # the same bytes objects: not re-encoded
    store.apply({"w": torch.ones(3)})  # version 4: a new pull
    assert list(kept.messages(store, 4, (W,), codec, 1024)) == list(
        pull_messages(store, 4, (W,), codec, 1024)) != first


def test_large_pulls_and_version_zero_are_not_kept() -> None:
    codec = make_codec(CodecSpec("none"))
    for store, limit in ((_store(0), 1 << 20), (_store(2), 8)):
        kept = EncodedPulls(limit)
        first = list(kept.messages(store, store.version, (W,), codec, 1024))
        again = list(kept.messages(store, store.version, (W,), codec, 1024))
        assert first == again and not any(a is b for a, b in zip(first, again))
