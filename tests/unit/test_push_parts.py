"""Pushes in parts (buckets sent during backward): held until the closing part, then one
push for the update policy; refused parts change nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig, UnusedGradients
from paramserver.server.core import ParameterServerCore
from paramserver.types import Aggregation, Mode, Role
from tests.helpers import push_stream, register_stream

INIT = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
SGD = OptimizerConfig(lr=0.5, momentum=0.0)


def _core(mode: Mode = Mode.SYNC, workers: int = 1, **kw: object) -> tuple[
        ParameterServerCore, list[str]]:
    core = ParameterServerCore(ServerConfig(mode=mode, expected_workers=workers, optimizer=SGD,
                                            **kw))  # type: ignore[arg-type]
    sessions = [core.handshake(f"w{i}", Role.WORKER, [], []).session_id for i in range(workers)]
    core.register(iter(register_stream(sessions[0], INIT)))
    return core, sessions


def _state(core: ParameterServerCore) -> dict[str, np.ndarray]:
    return {n: p.numpy().copy() for n, p in core.store.params.items()}


def _refused(code: grpc.StatusCode, core: ParameterServerCore, stream: list[object]) -> str:
    with pytest.raises(ParamServerError) as info:
        core.push(iter(stream))
    assert info.value.code == code, info.value.message
    return info.value.message


@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.ASYNC])
def test_parts_apply_once_as_one_push(mode: Mode) -> None:
    core, (s,) = _core(mode)
    held = core.push(iter(push_stream(s, 0, {"w": torch.ones(2, 3)}, more_parts=True)))
    assert not held.applied and core.store.version == 0
    assert torch.equal(core.store.params["w"], INIT["w"])  # held, not applied
    closed = core.push(iter(push_stream(s, 0, {"b": torch.full((3,), 2.0)})))
    assert closed.applied and closed.version == 1  # one version for both parts
    np.testing.assert_allclose(core.store.params["w"].numpy(), INIT["w"].numpy() - 0.5)
    np.testing.assert_allclose(core.store.params["b"].numpy(), -1.0 * np.ones(3))


@pytest.mark.parametrize(("unused", "b_mean"), [
    (UnusedGradients.ZERO, 0.5),  # s2 pushed no b: a zero gradient from s2, as DDP averages
    (UnusedGradients.SKIP, 1.0),  # the mean over the workers that pushed b (s1 only)
])
def test_closing_part_may_be_empty_and_sync_waits_for_every_worker(
        unused: UnusedGradients, b_mean: float) -> None:
    core, (s1, s2) = _core(workers=2, unused_gradients=unused)
    core.push(iter(push_stream(s1, 0, {"w": torch.ones(2, 3)}, more_parts=True)))
    core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)}, more_parts=True)))
    assert not core.push(iter(push_stream(s1, 0, {}))).applied  # s1 done, s2 missing
    result = core.push(iter(push_stream(s2, 0, {"w": torch.full((2, 3), 3.0)})))
    assert result.applied
    np.testing.assert_allclose(core.store.params["w"].numpy(), INIT["w"].numpy() - 0.5 * 2.0)
    np.testing.assert_allclose(core.store.params["b"].numpy(), -0.5 * b_mean * np.ones(3))


def test_weight_comes_from_the_closing_part() -> None:
    core, (s1, s2) = _core(workers=2, aggregation=Aggregation.WEIGHTED)
    core.push(iter(push_stream(s1, 0, {"b": torch.ones(3)}, num_samples=0, more_parts=True)))
    core.push(iter(push_stream(s1, 0, {}, num_samples=1)))
    core.push(iter(push_stream(s2, 0, {"b": torch.full((3,), 4.0)}, num_samples=3)))
    np.testing.assert_allclose(core.store.params["b"].numpy(), -0.5 * 13 / 4 * np.ones(3),
                               atol=1e-6)


def test_a_tensor_sent_in_two_parts_is_refused_and_changes_nothing() -> None:
    core, (s,) = _core()
    core.push(iter(push_stream(s, 0, {"w": torch.ones(2, 3)}, more_parts=True)))
    before = _state(core)
    message = _refused(grpc.StatusCode.INVALID_ARGUMENT, core,
                       push_stream(s, 0, {"w": torch.ones(2, 3)}))
    assert "'w'" in message and "earlier part" in message
    assert all(np.array_equal(before[n], v) for n, v in _state(core).items())
    assert core.store.version == 0
    # The held part is still there: closing with the other tensor applies both.
    assert core.push(iter(push_stream(s, 0, {"b": torch.ones(3)}))).applied


def test_abandoned_parts_of_an_older_step_are_dropped_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    core, (s,) = _core(mode=Mode.ASYNC)
    core.push(iter(push_stream(s, 0, {"w": torch.ones(2, 3)}, more_parts=True)))
    core.push(iter(push_stream(s, 0, {"b": torch.ones(3)})))  # version 1
    core.push(iter(push_stream(s, 1, {"w": torch.ones(2, 3)}, more_parts=True)))
    before = _state(core)
    # A part for an older step than the open one is refused.
    message = _refused(grpc.StatusCode.FAILED_PRECONDITION, core,
                       push_stream(s, 0, {"b": torch.ones(3)}, more_parts=True))
    assert "step 1 is open" in message
    core.store.apply({"b": torch.zeros(3)})  # another worker moved the model on: version 2
    with caplog.at_level("WARNING"):
        result = core.push(iter(push_stream(s, 2, {"b": torch.ones(3)})))
    assert "unfinished" in caplog.text
    assert result.applied  # only the step-2 part: the step-1 'w' part was dropped
    np.testing.assert_allclose(core.store.params["w"].numpy(), before["w"])
    assert core._parts.open_count() == 0
