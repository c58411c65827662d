"""The server core under the attacks of issue #13, without a network: budgets refuse before
allocating, the ledger only advances by one, and refusals leave the state hash unchanged."""

from __future__ import annotations

import grpc
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.ledger import PushLedger
from paramserver.server.limits import ServerLimits
from paramserver.server.push_checks import SMALL_NUMEL, all_finite
from paramserver.types import Mode, PushResult, Role
from tests.helpers import push_stream, refused, register_stream
from workers.trainer import require_some_applied

INIT = {"w": torch.zeros(1024), "b": torch.zeros(3)}
SGD = OptimizerConfig(lr=1.0, momentum=0.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now



def test_held_push_parts_are_bounded_across_sessions_before_any_byte_is_read() -> None:
    limits = ServerLimits(max_held_part_bytes=6000)  # one 4 KiB part fits, two do not
    core = ParameterServerCore(ServerConfig(expected_workers=3, optimizer=SGD, limits=limits))
    sessions = [core.handshake(w, Role.WORKER, [], []).session_id for w in "abc"]
    core.register(iter(register_stream(sessions[0], INIT)))
    part = {"w": torch.ones(1024)}
    assert not core.push(iter(push_stream(sessions[0], 0, part, more_parts=True))).applied
    before = core.store.state_hash()

    def untouched() -> object:  # a stream that must not be read: refused up front
        yield push_stream(sessions[1], 0, part, more_parts=True)[0]
        raise AssertionError("the part's payload was read before the budget check")

    refused(grpc.StatusCode.RESOURCE_EXHAUSTED, core.push, untouched())
    assert core.store.state_hash() == before
    core.leave(sessions[0])  # its held part is freed, and with it the budget
    assert not core.push(iter(push_stream(sessions[1], 0, part, more_parts=True))).applied


def test_the_ledger_only_advances_by_one_and_a_refusal_changes_nothing() -> None:
    ledger = PushLedger()
    refused(grpc.StatusCode.FAILED_PRECONDITION, ledger.begin, "w", 1, 2**64 - 1, 1.0)
    assert len(ledger) == 0
    assert ledger.begin("w", 1, 1, timeout_s=1) is None
    ledger.finish("w", 1, 1, PushResult(version=1, applied=True))
    refused(grpc.StatusCode.FAILED_PRECONDITION, ledger.begin, "w", 1, 3, 1.0)
    assert ledger.begin("w", 1, 2, timeout_s=1) is None
    ledger.finish("w", 1, 2, None)
    refused(grpc.StatusCode.FAILED_PRECONDITION, ledger.begin, "w", 2, 5, 1.0)
    assert ledger.begin("w", 2, 1, timeout_s=1) is None  # a new incarnation starts at 1


def test_a_registered_worker_gone_idle_stops_holding_ssp_pulls() -> None:
    clock = FakeClock()
    limits = ServerLimits(member_idle_s=5.0)
    core = ParameterServerCore(ServerConfig(mode=Mode.SSP, staleness=0, lease_s=0.0,
                                            optimizer=SGD, limits=limits), clock=clock)
    fast, idle = (core.handshake(w, Role.WORKER, [], []).session_id for w in ("fast", "idle"))
    core.register(iter(register_stream(fast, INIT)))
    core.register(iter(register_stream(idle, INIT, with_values=False)))
    assert b"".join(core.pull(idle, 0, [], timeout_s=1.0))  # joins the clocks at 0
    assert core.push(iter(push_stream(fast, 0, {"b": torch.ones(3)}))).applied
    refused(grpc.StatusCode.DEADLINE_EXCEEDED, core.pull, fast, 0, [], 0.3)  # lead 1 > 0
    clock.now += 6.0  # idle neither pushed nor registered for longer than member_idle_s
    assert b"".join(core.pull(fast, 0, [], timeout_s=1.0))


def test_a_registered_ghost_stalls_a_sync_step_only_until_it_is_idle() -> None:
    clock = FakeClock()
    core = ParameterServerCore(ServerConfig(expected_workers=1, lease_s=0.0, optimizer=SGD,
                                            limits=ServerLimits(member_idle_s=5.0)),
                               clock=clock)
    real, ghost = (core.handshake(w, Role.WORKER, [], []).session_id for w in ("real", "ghost"))
    core.register(iter(register_stream(real, INIT)))
    core.register(iter(register_stream(ghost, INIT, with_values=False)))  # then only heartbeats
    assert not core.push(iter(push_stream(real, 0, {"b": torch.ones(3)}))).applied
    clock.now += 4.0
    core.heartbeat(ghost)
    core.tick()
    assert core.store.version == 0  # still within the idle timeout: waited for
    clock.now += 2.0
    core.heartbeat(ghost)
    core.tick()  # idle for 6 s > 5 s: no longer a member the step waits for
    assert core.store.version == 1


def test_a_cancelled_pull_ends_at_once() -> None:
    import threading
    import time
    core = ParameterServerCore(ServerConfig(expected_workers=1, optimizer=SGD))
    session = core.handshake("a", Role.WORKER, [], []).session_id
    core.register(iter(register_stream(session, INIT)))
    cancelled, errors = threading.Event(), []

    def pull() -> None:
        try:
            core.pull(session, 5, [], 60.0, cancelled)
        except ParamServerError as error:
            errors.append(error)

    waiter = threading.Thread(target=pull)
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    cancelled.set()
    core.wake()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - started < 1.0
    assert errors and "cancelled" in errors[0].message


def test_the_finite_check_tells_overflow_from_nan() -> None:
    assert all_finite(torch.full((10,), 60000.0, dtype=torch.float16))  # sum overflows
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))
    assert all_finite(torch.empty(0))
    assert all_finite(torch.full((10,), 3e38))  # a small tensor's sum of squares overflows
    assert not all_finite(torch.tensor([2.0, -float("inf")], dtype=torch.float64))
    assert all_finite(torch.ones(3, 4, requires_grad=True))
    large = torch.zeros(SMALL_NUMEL + 1)
    assert all_finite(large) and not all_finite(large.index_fill_(0, torch.tensor([7]),
                                                                  float("nan")))


def test_a_worker_whose_every_push_was_aborted_fails_loudly() -> None:
    require_some_applied("w", pushes=10, aborted=9)
    require_some_applied("w", pushes=0, aborted=0)
    with pytest.raises(ParamServerError, match="all 10 pushes were ABORTED"):
        require_some_applied("w", pushes=10, aborted=10)
