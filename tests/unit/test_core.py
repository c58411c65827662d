"""ParameterServerCore without a network: semantics, math, and refusals that change nothing."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import AsyncLearningRate, ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import Aggregation, CodecSpec, Mode, PushHeader, Role, TensorSpec
from paramserver.wire import Chunk
from tests.helpers import push_stream, refused, register_stream

INIT = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
PLAIN_SGD = OptimizerConfig(lr=0.5, momentum=0.0)


def _core(mode: Mode = Mode.SYNC, workers: int = 2, **kw: object) -> ParameterServerCore:
    return ParameterServerCore(ServerConfig(mode=mode, expected_workers=workers,
                                            optimizer=PLAIN_SGD, **kw))  # type: ignore[arg-type]


def _join(core: ParameterServerCore, *worker_ids: str) -> list[str]:
    sessions = [core.handshake(w, Role.WORKER, [], []).session_id for w in worker_ids]
    core.register(iter(register_stream(sessions[0], INIT)))
    return sessions



def _pulled(core: ParameterServerCore, session: str, min_version: int = 0) -> bytes:
    return b"".join(core.pull(session, min_version, [], timeout_s=1.0))


def test_register_is_idempotent_and_refuses_a_different_layout() -> None:
    core = _core()
    s1, s2 = (core.handshake(w, Role.WORKER, [], []).session_id for w in ("a", "b"))
    assert core.register(iter(register_stream(s1, INIT))).created is True
    assert core.register(iter(register_stream(s2, INIT))).created is False
    assert core.register(iter(register_stream(s2, INIT, with_values=False))).created is False
    other = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    message = refused(grpc.StatusCode.FAILED_PRECONDITION, core.register,
                       iter(register_stream(s2, other)))
    assert "'w'" in message and "[2, 3]" in message
    assert torch.equal(core.store.params["w"], INIT["w"])


def test_sync_step_applies_mean_once_all_workers_pushed() -> None:
    core = _core()
    s1, s2 = _join(core, "a", "b")
    g1 = {"w": torch.ones(2, 3), "b": torch.full((3,), 2.0)}
    g2 = {"w": torch.full((2, 3), 3.0), "b": torch.zeros(3)}
    first = core.push(iter(push_stream(s1, 0, g1)))
    assert not first.applied and core.store.version == 0
    assert torch.equal(core.store.params["w"], INIT["w"])  # nothing applied after one push
    second = core.push(iter(push_stream(s2, 0, g2)))
    assert second.applied and second.version == 1
    expected_w = INIT["w"].numpy() - 0.5 * (1.0 + 3.0) / 2
    np.testing.assert_allclose(core.store.params["w"].numpy(), expected_w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(core.store.params["b"].numpy(), -0.5 * np.ones(3), atol=1e-6)


def test_weighted_aggregation_uses_sample_counts() -> None:
    core = _core(aggregation=Aggregation.WEIGHTED)
    s1, s2 = _join(core, "a", "b")
    core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)}, num_samples=1)))
    core.push(iter(push_stream(s2, 0, {"b": torch.full((3,), 4.0)}, num_samples=3)))
    np.testing.assert_allclose(core.store.params["b"].numpy(), -0.5 * (1 + 12) / 4 * np.ones(3),
                               atol=1e-6)
    assert torch.equal(core.store.params["w"], INIT["w"])  # nobody pushed w: no update
    message = refused(grpc.StatusCode.INVALID_ARGUMENT, core.push,
                       iter(push_stream(s1, 1, {"b": torch.ones(3)}, num_samples=0)))
    assert "num_samples" in message


def test_async_applies_each_push_and_reports_staleness() -> None:
    core = _core(Mode.ASYNC, async_lr=AsyncLearningRate.CONSTANT)  # the full rate per push
    s1, s2 = _join(core, "a", "b")
    assert core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)}))).version == 1
    result = core.push(iter(push_stream(s2, 0, {"b": torch.ones(3)})))
    assert result.applied and result.version == 2 and result.staleness == 1
    np.testing.assert_allclose(core.store.params["b"].numpy(), -1.0 * np.ones(3), atol=1e-6)
    refused(grpc.StatusCode.FAILED_PRECONDITION, core.push,
             iter(push_stream(s1, 5, {"b": torch.ones(3)})))


@pytest.mark.parametrize("rule, expected", [
    # lr 0.5 / max(2 workers, staleness + 1): staleness 0, 1, then 2 (lr / 3)
    (AsyncLearningRate.WORKERS, [-0.25, -0.5, -0.5 - 0.5 / 3]),
    # lr 0.5 / max(1, staleness): 0 and 1 take the full rate, 2 half of it
    (AsyncLearningRate.STALENESS, [-0.5, -1.0, -1.25]),
    (AsyncLearningRate.CONSTANT, [-0.5, -1.0, -1.5]),
])
def test_async_learning_rate_rules(rule: AsyncLearningRate, expected: list[float]) -> None:
    core = _core(Mode.ASYNC, async_lr=rule)
    s1, s2 = _join(core, "a", "b")
    assert ServerConfig().async_lr is AsyncLearningRate.WORKERS  # the default
    for session, value in zip((s1, s2, s1), expected):  # all computed on version 0
        core.push(iter(push_stream(session, 0, {"b": torch.ones(3)})))
        np.testing.assert_allclose(core.store.params["b"].numpy(), value * np.ones(3),
                                   atol=1e-6)


@pytest.mark.parametrize("case", ["truncated", "oversize", "unknown", "shape", "dtype",
                                  "wrong_step", "old_step", "twice", "no_header", "bad_session",
                                  "observer"])
def test_bad_pushes_are_refused_and_change_nothing(case: str) -> None:
    core = _core()
    s1, s2 = _join(core, "a", "b")
    observer = core.handshake("eye", Role.OBSERVER, [], []).session_id
    core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)})))
    before, pending = core.store.state_hash(), core.policy.report().pending_pushes
    good = push_stream(s2, 0, {"b": torch.ones(3)})
    streams = {
        "truncated": (good[:-1], grpc.StatusCode.INVALID_ARGUMENT),
        "oversize": (good + [Chunk(0, 12, memoryview(b"xxxx"))], grpc.StatusCode.INVALID_ARGUMENT),
        "unknown": (push_stream(s2, 0, {"nope": torch.ones(3)}), grpc.StatusCode.NOT_FOUND),
        "shape": (push_stream(s2, 0, {"b": torch.ones(4)}), grpc.StatusCode.INVALID_ARGUMENT),
        "dtype": (push_stream(s2, 0, {"b": torch.ones(3, dtype=torch.float64)}),
                  grpc.StatusCode.INVALID_ARGUMENT),
        "wrong_step": (push_stream(s2, 1, {"b": torch.ones(3)}),
                       grpc.StatusCode.FAILED_PRECONDITION),
        "old_step": (push_stream(s2, -1, {"b": torch.ones(3)}), grpc.StatusCode.ABORTED),
        "twice": (push_stream(s1, 0, {"b": torch.ones(3)}), grpc.StatusCode.FAILED_PRECONDITION),
        "no_header": (good[1:], grpc.StatusCode.INVALID_ARGUMENT),
        "bad_session": (push_stream("nope", 0, {"b": torch.ones(3)}),
                        grpc.StatusCode.FAILED_PRECONDITION),
        "observer": (push_stream(observer, 0, {"b": torch.ones(3)}),
                     grpc.StatusCode.FAILED_PRECONDITION),
    }
    stream, code = streams[case]
    refused(code, core.push, iter(stream))
    assert core.store.state_hash() == before
    if case == "oversize":  # refused after its first chunk was added in place: the step's
        # aggregate is discarded (docs/wire.md, "Push"), and "a" is asked to push again
        assert core.policy.report().pending_pushes == 0
        assert "step discarded: step 0" in refused(grpc.StatusCode.ABORTED, _pulled, core, s1, 1)
        core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)})))
    else:
        assert core.policy.report().pending_pushes == pending
    # The job still works: the honest push completes the step.
    assert core.push(iter(good)).applied


def test_sync_job_forms_with_expected_workers_then_others_may_join() -> None:
    core = _core(workers=2)
    s1 = core.handshake("a", Role.WORKER, [], []).session_id
    core.register(iter(register_stream(s1, INIT)))
    assert not core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)}))).applied
    assert core.store.version == 0  # not formed: step 0 waits for the second worker
    s2 = core.handshake("b", Role.WORKER, [], []).session_id
    assert core.push(iter(push_stream(s2, 0, {"b": torch.ones(3)}))).applied
    s3 = core.handshake("c", Role.WORKER, [], []).session_id  # joins the running job
    core.register(iter(register_stream(s3, INIT, with_values=False)))  # a member from here
    core.handshake("viewer", Role.OBSERVER, [], [])  # observers never count
    for session in (s1, s2):
        assert not core.push(iter(push_stream(session, 1, {"b": torch.ones(3)}))).applied
    assert core.push(iter(push_stream(s3, 1, {"b": torch.ones(3)}))).applied  # waited for c


def test_pull_long_polls_until_the_version_exists() -> None:
    core = _core(workers=1)
    (s1,) = _join(core, "a")
    refused(grpc.StatusCode.DEADLINE_EXCEEDED, core.pull, s1, 1, [], 0.05)
    got: list[bytes] = []
    waiter = threading.Thread(target=lambda: got.append(_pulled(core, s1, 1)))
    waiter.start()
    core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)})))
    waiter.join(5)
    assert got and not waiter.is_alive()
    refused(grpc.StatusCode.NOT_FOUND, core.pull, s1, 0, ["missing"], 0.1)


def test_pull_returns_current_parameters_in_chunks() -> None:
    core = ParameterServerCore(ServerConfig(expected_workers=1, chunk_bytes=1024))
    session = core.handshake("a", Role.WORKER, [], []).session_id
    big = {"w": torch.randn(1000), "b": torch.randn(7)}
    core.register(iter(register_stream(session, big)))
    from paramserver import serde
    messages = [serde.decode_pull_response(m) for m in core.pull(session, 0, [], 1.0)]
    header = messages[0]
    assert header.version == 0 and [s.name for s in header.tensors] == ["w", "b"]
    assert not header.is_delta
    data = {0: bytearray(), 1: bytearray()}
    for chunk in messages[1:]:
        assert chunk.offset == len(data[chunk.tensor]) and chunk.data.nbytes <= 1024
        data[chunk.tensor] += chunk.data
    assert torch.equal(torch.frombuffer(data[0], dtype=torch.float32), big["w"])
    assert len(messages) == 1 + 4 + 1  # 4000 bytes in 1 KiB chunks, 28 bytes in one


def test_close_wakes_long_polls_with_unavailable() -> None:
    core = _core(workers=1)
    (s1,) = _join(core, "a")
    errors: list[grpc.StatusCode] = []

    def wait() -> None:
        try:
            core.pull(s1, 5, [], 10.0)
        except ParamServerError as error:
            errors.append(error.code)

    waiter = threading.Thread(target=wait)
    waiter.start()
    core.close()
    waiter.join(5)
    assert errors == [grpc.StatusCode.UNAVAILABLE]


def test_push_header_for_unregistered_model_is_failed_precondition() -> None:
    core = _core()
    session = core.handshake("a", Role.WORKER, [], []).session_id
    header = PushHeader(session, 0, 1, (TensorSpec("b", (3,), torch.float32),))
    refused(grpc.StatusCode.FAILED_PRECONDITION, core.push, iter([header]))


@pytest.mark.parametrize("optimizer, mode, offered", [
    (OptimizerConfig(lr=0.5, momentum=0.9), Mode.SYNC, 0.9),
    (OptimizerConfig(lr=0.5, momentum=0.9, weight_decay=1e-4), Mode.SYNC, 0.0),
    (OptimizerConfig(lr=0.5, momentum=0.0), Mode.SYNC, 0.0),
    (OptimizerConfig(name="adam", lr=0.01), Mode.SYNC, 0.0),
    (OptimizerConfig(lr=0.5, momentum=0.9), Mode.FEDERATED, 0.0),
])
def test_momentum_correction_is_offered_only_where_moving_it_is_exact(
        optimizer: OptimizerConfig, mode: Mode, offered: float) -> None:
    core = ParameterServerCore(ServerConfig(mode=mode, optimizer=optimizer))
    topk = core.handshake("a", Role.WORKER, [CodecSpec.parse("topk:ratio=0.5")], [])
    assert topk.momentum_correction == offered
    assert core.handshake("b", Role.WORKER, [], []).momentum_correction == 0.0  # `none`


@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.ASYNC])
def test_pushes_with_momentum_applied_get_plain_sgd_beside_the_momentum_path(
        mode: Mode) -> None:
    core = ParameterServerCore(ServerConfig(
        mode=mode, expected_workers=2, async_lr=AsyncLearningRate.CONSTANT,
        optimizer=OptimizerConfig(lr=0.5, momentum=0.9)))
    s1, s2 = _join(core, "a", "b")
    raw, corrected = torch.full((3,), 2.0), torch.full((3,), 4.0)
    core.push(iter(push_stream(s1, 0, {"b": raw})))
    core.push(iter(push_stream(s2, 0, {"b": corrected}, momentum_applied=True)))
    if mode is Mode.SYNC:  # one step: momentum SGD on raw / 2, plain SGD on corrected / 2
        expected = -0.5 * 1.0 - 0.5 * 2.0
    else:  # two updates: momentum SGD on raw, then plain SGD on corrected (no momentum)
        expected = -0.5 * 2.0 - 0.5 * 4.0
    np.testing.assert_allclose(core.store.params["b"].numpy(), expected * np.ones(3),
                               atol=1e-6)
