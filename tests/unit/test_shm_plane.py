"""The shared-memory data plane in the core (issue #14, `server/shm_plane.py`): offers are
accepted only with --shm-data-plane and the worker's token; a push naming a bad segment or
range is refused with its status and changes nothing; a good one is applied exactly as its
gRPC twin; a pull leaves the values in the pull segment and answers the header alone."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import grpc
import pytest
import torch

from paramserver import serde
from paramserver.errors import InvalidArgument
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.shm_plane import SegmentReader, push_chunks
from paramserver.shm import segments
from paramserver.shm.records import ShmOffer, ShmRanges
from paramserver.types import CodecSpec, PullHeader, PushHeader, Role, TensorSpec
from tests.helpers import chunks, refused, register_stream
from workers.shm_plane import ShmSegments

pytestmark = pytest.mark.skipif(not segments.available(), reason="no writable /dev/shm")

INIT = {"w": torch.arange(64, dtype=torch.float32), "b": torch.zeros(8)}
GRADS = {"w": torch.arange(64, dtype=torch.float32) / 8, "b": torch.full((8,), 0.5)}


@pytest.fixture
def shm() -> Iterator[list[ShmSegments]]:
    made: list[ShmSegments] = []
    yield made
    for segs in made:
        segs.close()


def _core(shm: list[ShmSegments], enabled: bool = True, workers: int = 2,
          ) -> tuple[ParameterServerCore, list[str]]:
    core = ParameterServerCore(ServerConfig(expected_workers=workers, shm_data_plane=enabled,
                                            optimizer=OptimizerConfig(lr=0.5, momentum=0.9)))
    sessions = []
    for i in range(workers):
        shm.append(ShmSegments())
        session = core.handshake(f"w{i}", Role.WORKER, [CodecSpec("none")],
                                 [CodecSpec("none")], shm=shm[-1].offer)
        assert session.shm_data_plane is enabled
        sessions.append(session.session_id)
    core.register(iter(register_stream(sessions[0], INIT)))
    return core, sessions


def _specs() -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.of(n, g) for n, g in GRADS.items())


def _shm_push(session: str, segs: ShmSegments, ranges: ShmRanges | None = None,
              extra: list[object] | None = None) -> Iterator[object]:
    written = segs.write_push([memoryview(g.numpy()).cast("B") for g in GRADS.values()])
    yield PushHeader(session, 0, 1, _specs(), shm=ranges or written)
    yield from extra or []


def test_offers_need_the_flag_and_the_token(shm: list[ShmSegments]) -> None:
    _core(shm, enabled=False, workers=1)  # declined without --shm-data-plane
    core = ParameterServerCore(ServerConfig(shm_data_plane=True))
    shm.append(ShmSegments())
    forged = dataclasses.replace(shm[-1].offer, token=os.urandom(segments.TOKEN_BYTES))
    assert not core.handshake("x", Role.WORKER, [], [], shm=forged).shm_data_plane
    bad = ShmOffer("../../etc/passwd", shm[-1].pull_segment, shm[-1].offer.token)
    assert not core.handshake("y", Role.WORKER, [], [], shm=bad).shm_data_plane
    gone = ShmOffer("psm-" + "0" * 32, shm[-1].pull_segment, shm[-1].offer.token)
    assert not core.handshake("z", Role.WORKER, [], [], shm=gone).shm_data_plane
    assert core.handshake("v", Role.WORKER, [], [], shm=shm[-1].offer).shm_data_plane
    shm[-1].write_push([memoryview(bytes(64))], sequence=1)  # pushes leave the token be
    assert core.handshake("v", Role.WORKER, [], [], shm=shm[-1].offer).shm_data_plane
    assert core.handshake("v", Role.WORKER, [], [], shm=shm[-1].renew_offer()).shm_data_plane


def _bad_pushes(segs: ShmSegments, other: ShmSegments) -> dict[str, tuple[grpc.StatusCode,
                                                                        ShmRanges, list]]:
    good = segs.write_push([memoryview(g.numpy()).cast("B") for g in GRADS.values()])
    past = ShmRanges(good.segment, good.offsets, (good.lengths[0], good.lengths[1] + 4096))
    big = ShmRanges(good.segment, good.offsets, (good.lengths[0] + 4, good.lengths[1]))
    token = ShmRanges(good.segment, (0, good.offsets[1]), good.lengths)
    return {
        "name": (grpc.StatusCode.INVALID_ARGUMENT,
                 dataclasses.replace(good, segment="psm-../../x"), []),
        "not its own": (grpc.StatusCode.NOT_FOUND,
                        dataclasses.replace(good, segment=other.push_segment), []),
        "past the end": (grpc.StatusCode.INVALID_ARGUMENT, past, []),
        "count": (grpc.StatusCode.INVALID_ARGUMENT,
                  dataclasses.replace(good, offsets=good.offsets[:1]), []),
        "oversize": (grpc.StatusCode.INVALID_ARGUMENT, big, []),
        "over the token": (grpc.StatusCode.INVALID_ARGUMENT, token, []),
        "chunks too": (grpc.StatusCode.INVALID_ARGUMENT, good,
                       chunks(list(GRADS.values()))[:1]),
    }


@pytest.mark.parametrize("case", ["name", "not its own", "past the end", "count", "oversize",
                                  "over the token", "chunks too"])
def test_a_bad_segment_or_range_is_refused_and_changes_nothing(
        shm: list[ShmSegments], case: str) -> None:
    core, (a, b) = _core(shm)
    assert not core.push(_shm_push(a, shm[0])).applied
    before = core.store.state_hash()
    code, ranges, extra = _bad_pushes(shm[1], shm[0])[case]
    refused(code, core.push, _shm_push(b, shm[1], ranges, extra))
    assert core.store.state_hash() == before
    assert core.policy.report().pending_pushes == 1  # a's push is kept
    assert core.push(_shm_push(b, shm[1])).applied  # the good one goes through


def test_a_push_without_an_accepted_plane_is_refused(shm: list[ShmSegments]) -> None:
    core, (a, _) = _core(shm, enabled=False)
    before = core.store.state_hash()
    refused(grpc.StatusCode.FAILED_PRECONDITION, core.push, _shm_push(a, shm[0]))
    assert core.store.state_hash() == before


def test_shm_pushes_and_pulls_match_the_streams(shm: list[ShmSegments]) -> None:
    """Two workers' pushes through shm, and through the streams on a twin core: the same
    parameters; a pull through shm writes exactly the streamed pull's bytes."""
    core, (a, b) = _core(shm)
    twin, (c, d) = _core(shm)
    assert not core.push(_shm_push(a, shm[0])).applied
    assert core.push(_shm_push(b, shm[1])).applied
    for session in (c, d):
        twin.push(iter([PushHeader(session, 0, 1, _specs()), *chunks(list(GRADS.values()))]))
    assert core.store.state_hash() == twin.store.state_hash()
    answer = list(core.pull(a, 1, [], timeout_s=1.0, shm_segment=shm[0].pull_segment))
    header = serde.RPCS["Pull"].response_from_bytes(answer[0])
    assert len(answer) == 1 and isinstance(header, PullHeader) and header.shm is not None
    got: dict[int, bytes] = {}
    shm[0].read_pull(header.shm, len(header.tensors),
                     lambda i, at, data: got.update({i: got.get(i, b"") + bytes(data)}))
    for index, spec in enumerate(header.tensors):
        assert got[index] == twin.store.params[spec.name].numpy().tobytes(), spec.name
    refused(grpc.StatusCode.NOT_FOUND, lambda: list(core.pull(
        a, 1, [], timeout_s=1.0, shm_segment=shm[1].pull_segment)))


def test_a_push_written_over_while_it_is_read_is_refused(shm: list[ShmSegments]) -> None:
    """The stamp: a header whose sequence the segment does not hold is refused before
    anything; one whose segment is written over mid-read (a worker that gave up on it and
    pushed its next) is refused at the end of the read."""
    core, (a, _) = _core(shm)
    record = core.members.require_worker(a, None)
    payloads = [memoryview(g.numpy()).cast("B") for g in GRADS.values()]
    ranges = shm[0].write_push(payloads, sequence=2)
    header = PushHeader(a, 0, 1, _specs(), incarnation=record.incarnation, sequence=1,
                        shm=ranges)
    before = core.store.state_hash()
    refused(grpc.StatusCode.INVALID_ARGUMENT, core.push, iter([header]))
    assert core.store.state_hash() == before
    header = dataclasses.replace(header, sequence=2)
    stream = push_chunks(record, header, iter([]), record.push_decoder)
    next(stream)
    shm[0].write_push(payloads, sequence=3)
    with pytest.raises(InvalidArgument, match="written over"):
        list(stream)


def test_the_first_push_is_read_into_the_aggregate_and_a_refused_one_changes_nothing(
        shm: list[ShmSegments], monkeypatch: pytest.MonkeyPatch) -> None:
    """The step's first push is read from its segment straight into the aggregate (no
    window: `SegmentReader.pieces` is not called), a later one is read and added. A first push
    with NaN in it is refused and leaves no trace: the step, read again, is its twin's."""
    windows: list[int] = []
    pieces = SegmentReader.pieces
    monkeypatch.setattr(SegmentReader, "pieces", lambda self: windows.append(1) or pieces(self))
    core, (a, b) = _core(shm)
    twin, (c, d) = _core(shm)
    bad = {"w": GRADS["w"].clone(), "b": GRADS["b"]}
    bad["w"][40] = float("nan")
    ranges = shm[0].write_push([memoryview(g.numpy()).cast("B") for g in bad.values()])
    before = core.store.state_hash()
    refused(grpc.StatusCode.INVALID_ARGUMENT, core.push,
            iter([PushHeader(a, 0, 1, _specs(), shm=ranges)]))
    assert core.store.state_hash() == before and core.policy.report().pending_pushes == 0
    assert not core.push(_shm_push(a, shm[0])).applied
    assert windows == []
    assert core.push(_shm_push(b, shm[1])).applied
    assert len(windows) == len(GRADS)  # the second push: read, then added
    for session in (c, d):
        twin.push(iter([PushHeader(session, 0, 1, _specs()), *chunks(list(GRADS.values()))]))
    assert core.store.state_hash() == twin.store.state_hash()
