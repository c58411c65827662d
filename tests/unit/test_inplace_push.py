"""Sync pushes added to the step's aggregate chunk by chunk (issue #14, `server/inplace.py`):
what is refused before the first add changes nothing; a push that fails after it discards
the step, every worker of the step pushes again, and the step is applied once, exactly."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import (
    Aggregation,
    CodecSpec,
    PushHeader,
    PushResult,
    Role,
    StepOptions,
    TensorSpec,
)
from paramserver.wire import Chunk
from tests.helpers import chunks, refused, register_stream

INIT = {"w": torch.arange(64, dtype=torch.float32), "b": torch.zeros(8)}  # w: 4 chunks of 64 B
LR = 0.5


class Broken(Exception):
    """The stream broke (what gRPC's request iterator raises when a client goes away)."""


def _core(workers: int, codec: str = "none") -> tuple[ParameterServerCore, list[str]]:
    core = ParameterServerCore(ServerConfig(expected_workers=workers,
                                            optimizer=OptimizerConfig(lr=LR, momentum=0.9)))
    offers = [CodecSpec(codec)]
    sessions = [core.handshake(f"w{i}", Role.WORKER, offers, []).session_id
                for i in range(workers)]
    core.register(iter(register_stream(sessions[0], INIT)))
    return core, sessions


def _grads(worker: int) -> dict[str, torch.Tensor]:
    """Per worker, values whose sums and means are exact in float32."""
    return {name: torch.full_like(value, 0.25 * (worker + 1)) + torch.arange(value.numel()) / 8
            for name, value in INIT.items()}


def _stream(session: str, grads: dict[str, torch.Tensor], step: int = 0,
            cut_after: int | None = None, payload: list[Chunk] | None = None) -> Iterator[object]:
    specs = tuple(TensorSpec.of(n, g) for n, g in grads.items())
    yield PushHeader(session, step, 1, specs)
    for index, chunk in enumerate(payload or chunks(list(grads.values()))):
        if cut_after is not None and index == cut_after:
            raise Broken("stream broke")
        yield chunk



def _pull_next(core: ParameterServerCore, session: str) -> bytes:
    return b"".join(core.pull(session, core.store.version + 1, [], timeout_s=0.5))


def _reference(workers: int) -> dict[str, torch.Tensor]:
    """One SGD-momentum step (momentum buffer = gradient on the first step) on the mean."""
    return {name: value - LR * sum(_grads(w)[name] for w in range(workers)) / workers
            for name, value in INIT.items()}


def _push_in_background(core: ParameterServerCore, stream: Iterator[object],
                        ) -> tuple[threading.Thread, list[PushResult]]:
    """`core.push(stream)` on a thread, returned once its first chunk is being added in
    place; the list gets the push's answer."""
    results: list[PushResult] = []
    thread = threading.Thread(target=lambda: results.append(core.push(stream)))
    thread.start()
    deadline = time.monotonic() + 10
    while core.policy._step.streams == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    return thread, results


def test_a_push_broken_after_its_first_chunk_makes_every_worker_push_again() -> None:
    core, (a, b, c) = _core(3)
    before = core.store.state_hash()
    assert not core.push(_stream(a, _grads(0))).applied
    assert not core.push(_stream(b, _grads(1))).applied
    with pytest.raises(Broken):
        core.push(_stream(c, _grads(2), cut_after=2))  # two chunks added, then it broke
    assert core.store.state_hash() == before and core.policy.report().pending_pushes == 0
    for session in (a, b):  # the workers waiting on the step are told to push it again
        message = refused(grpc.StatusCode.ABORTED, _pull_next, core, session)
        assert message.startswith("step discarded: step 0")
    assert not core.push(_stream(c, _grads(2))).applied  # the broken push's retry
    assert not core.push(_stream(a, _grads(0))).applied
    assert core.push(_stream(b, _grads(1))).applied
    assert core.store.version == 1
    for name, expected in _reference(3).items():
        assert torch.equal(core.store.params[name], expected), name


def _bad_first_chunks(grads: dict[str, torch.Tensor]) -> dict[str, list[Chunk]]:
    good = chunks(list(grads.values()))
    nan = grads["w"].clone()
    nan[3] = float("nan")
    return {"gap": [Chunk(0, 64, good[1].data)],
            "index": [Chunk(5, 0, good[0].data)],
            "oversize": [Chunk(1, 0, memoryview(bytes(40)))],
            "nan": chunks([nan, grads["b"]]),
            "truncated": good[:-1]}


@pytest.mark.parametrize("case", ["gap", "index", "oversize", "nan", "truncated"])
def test_a_chunk_refused_before_any_add_changes_nothing(case: str) -> None:
    core, (a, b) = _core(2)
    core.push(_stream(a, _grads(0)))
    before = core.store.state_hash()
    payload = _bad_first_chunks(_grads(1))[case]
    if case == "truncated":  # every chunk but the last was added: the step is discarded
        refused(grpc.StatusCode.INVALID_ARGUMENT, core.push, _stream(b, _grads(1),
                                                                     payload=payload))
        assert core.policy.report().pending_pushes == 0
        core.push(_stream(a, _grads(0)))
    else:
        refused(grpc.StatusCode.INVALID_ARGUMENT, core.push, _stream(b, _grads(1),
                                                                     payload=payload))
        assert core.policy.report().pending_pushes == 1  # a's push is kept
    assert core.store.state_hash() == before
    assert core.push(_stream(b, _grads(1))).applied
    for name, expected in _reference(2).items():
        assert torch.equal(core.store.params[name], expected), name


def test_a_later_chunk_refused_changes_no_parameter_and_discards_the_step() -> None:
    core, (a, b) = _core(2)
    core.push(_stream(a, _grads(0)))
    before = core.store.state_hash()
    nan = _grads(1)
    nan["w"][40] = float("inf")  # in the third chunk of w
    message = refused(grpc.StatusCode.INVALID_ARGUMENT, core.push, _stream(b, nan))
    assert "NaN or infinite" in message
    assert core.store.state_hash() == before
    assert "step discarded" in refused(grpc.StatusCode.ABORTED, _pull_next, core, a)


def test_fp16_pushes_are_added_in_place_too() -> None:
    core, (a, b) = _core(2, "fp16")
    for worker, session in enumerate((a, b)):
        grads = _grads(worker)
        wire = {n: g.half() for n, g in grads.items()}
        specs = tuple(TensorSpec.of(n, g) for n, g in grads.items())
        odd = [Chunk(c.tensor, c.offset, c.data) for c in chunks(list(wire.values()), 63)]
        core.push(iter([PushHeader(session, 0, 1, specs), *odd]))  # chunks split elements
    for name, expected in _reference(2).items():
        assert torch.equal(core.store.params[name], expected), name


def test_soak_of_broken_and_whole_pushes_leaks_no_aggregate() -> None:
    core, sessions = _core(2)
    pool = core._intake._pool
    out = {"taken": 0, "given": 0}
    take, give = pool.take, pool.give

    def counted_take(nbytes: int) -> torch.Tensor:
        out["taken"] += 1
        return take(nbytes)

    def counted_give(buffer: torch.Tensor) -> None:
        out["given"] += 1
        give(buffer)

    pool.take, pool.give = counted_take, counted_give  # type: ignore[method-assign]
    rng = random.Random(14)
    for step in range(200):
        while core.store.version == step:  # every worker pushes until the step is applied
            for worker, session in enumerate(sessions):
                if (core.store.version > step
                        or f"w{worker}" in core.policy._step.pushed):  # type: ignore[attr-defined]
                    continue
                with contextlib.suppress(Broken):
                    core.push(_stream(session, _grads(worker), step,
                                      cut_after=rng.choice([None, None, 1, 3])))
        assert out["taken"] == out["given"]  # every aggregate buffer went back to the pool
    assert out["taken"] >= 200 and core.policy.report().pending_pushes == 0
    assert core.policy._step.streams == 0  # type: ignore[attr-defined]


def test_a_quorum_step_waits_for_a_push_still_adding_to_it() -> None:
    core = ParameterServerCore(ServerConfig(expected_workers=2, sync_quorum=1,
                                            optimizer=OptimizerConfig(lr=LR, momentum=0.9)))
    a, b = (core.handshake(w, Role.WORKER, [], []).session_id for w in ("w0", "w1"))
    core.register(iter(register_stream(a, INIT)))
    go = threading.Event()

    def paused() -> Iterator[object]:
        stream = _stream(a, _grads(0))
        yield next(stream)
        yield next(stream)  # its first chunk is added, then it waits
        go.wait(10)
        yield from stream

    thread, results = _push_in_background(core, paused())
    assert not core.push(_stream(b, _grads(1))).applied  # the quorum is met, but a is adding
    go.set()
    thread.join(10)
    assert results[0].applied and core.store.version == 1
    for name, expected in _reference(2).items():
        assert torch.equal(core.store.params[name], expected), name


def test_weighted_pushes_in_place_take_their_sample_counts() -> None:
    core = ParameterServerCore(ServerConfig(expected_workers=2,
                                            aggregation=Aggregation.WEIGHTED,
                                            optimizer=OptimizerConfig(lr=LR, momentum=0.9)))
    a, b = (core.handshake(w, Role.WORKER, [], []).session_id for w in ("w0", "w1"))
    core.register(iter(register_stream(a, INIT)))
    for worker, (session, samples) in enumerate(((a, 1), (b, 3))):
        grads = _grads(worker)
        specs = tuple(TensorSpec.of(n, g) for n, g in grads.items())
        core.push(iter([PushHeader(session, 0, samples, specs), *chunks(list(grads.values()))]))
    for name, value in INIT.items():
        mean = (_grads(0)[name] + 3 * _grads(1)[name]) / 4
        assert torch.equal(core.store.params[name], value - LR * mean), name


def test_a_staged_push_joins_a_sum_half_written_in_place() -> None:
    core, (a, b) = _core(2)
    go = threading.Event()

    def paused() -> Iterator[object]:
        stream = _stream(a, _grads(0))
        for _ in range(3):  # the header and two chunks of w: a prefix of the sum is written
            yield next(stream)
        go.wait(10)
        yield from stream

    thread, results = _push_in_background(core, paused())
    time.sleep(0.1)  # let its two chunks be added
    scaled = {n: 2 * g for n, g in _grads(1).items()}  # loss-scaled: staged, not in place
    specs = tuple(TensorSpec.of(n, g) for n, g in scaled.items())
    core.push(iter([PushHeader(b, 0, 1, specs, options=StepOptions(grad_scale=2.0)),
                    *chunks(list(scaled.values()))]))
    go.set()
    thread.join(10)
    assert results[0].applied
    for name, expected in _reference(2).items():
        assert torch.equal(core.store.params[name], expected), name


def test_a_push_carrying_momentum_is_added_in_place_and_applied_plainly() -> None:
    core, (a,) = _core(1)
    grads = _grads(0)
    specs = tuple(TensorSpec.of(n, g) for n, g in grads.items())
    for step in (0, 1):
        core.push(iter([PushHeader(a, step, 1, specs, momentum_applied=True),
                        *chunks(list(grads.values()))]))
    for name, value in INIT.items():  # plain SGD: no server momentum on top (0.9 would
        # make the second step 1.9 gradients long)
        assert torch.equal(core.store.params[name], value - LR * grads[name] - LR * grads[name])
