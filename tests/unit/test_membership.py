"""Leases, eviction, leaving, and the ledger that makes pushes exactly-once; checkpoints
restore a core bit-identically."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from paramserver.errors import ParamServerError, SessionExpired
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.ledger import PushLedger
from paramserver.server.membership import Membership
from paramserver.types import CodecSpec, Mode, PushResult, Role
from tests.helpers import push_stream, register_stream

NONE = CodecSpec("none")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_silent_workers_are_evicted_and_their_sessions_expire() -> None:
    clock = FakeClock()
    members = Membership(Mode.SYNC, 2, lease_s=2.0, clock=clock)
    a = members.open("a", Role.WORKER, NONE, NONE)
    b = members.open("b", Role.WORKER, NONE, NONE)
    assert not members.formed  # a handshake alone makes no member (issue #13)
    for record in (a, b):
        members.mark_active(record.session_id)  # as Register or a push does
    assert members.formed and members.live_workers() == {"a", "b"}
    clock.now += 1.5
    members.touch(a.session_id)  # a heartbeats, b does not
    clock.now += 1.0
    evicted = members.evict_silent(step=7)
    assert [r.worker_id for r in evicted] == ["b"] and members.evictions == ["b@7"]
    assert members.live_workers() == {"a"}
    with pytest.raises(SessionExpired, match="evicted at step 7"):
        members.touch(b.session_id)
    again = members.open("b", Role.WORKER, NONE, NONE)  # it rejoins, a new incarnation
    assert again.incarnation == b.incarnation + 1
    members.leave(a.session_id)
    assert members.live_workers() == {"b"}


def _two_worker_job() -> tuple[ParameterServerCore, FakeClock, str]:
    """A formed sync job of workers a and b (lease 5 s, fake clock); a's session id."""
    core = ParameterServerCore(ServerConfig(mode=Mode.SYNC, expected_workers=2, lease_s=5.0))
    clock = FakeClock()
    core.members._clock = clock
    session = core.handshake("a", Role.WORKER, [], []).session_id
    other = core.handshake("b", Role.WORKER, [], []).session_id
    core.register(iter(register_stream(session, {"w": torch.ones(3)})))
    core.register(iter(register_stream(other, {"w": torch.ones(3)}, with_values=False)))
    return core, clock, session


def test_sync_step_closes_when_the_missing_worker_is_evicted() -> None:
    core, clock, s1 = _two_worker_job()
    assert not core.push(iter(push_stream(s1, 0, {"w": torch.ones(3)}))).applied
    clock.now += 3.0
    core.heartbeat(s1)
    clock.now += 3.0
    core.tick()  # b is silent for 6s > 5s: evicted, and the step closes with a's push
    assert core.store.version == 1
    assert core.status().evicted == ("b@0",)


def test_ledger_answers_a_retry_with_the_original_result() -> None:
    ledger = PushLedger()
    assert ledger.begin("w", 1, 1, timeout_s=1) is None
    ledger.finish("w", 1, 1, PushResult(version=4, applied=True))
    again = ledger.begin("w", 1, 1, timeout_s=1)
    assert again == PushResult(version=4, applied=True, duplicate=True)
    assert ledger.begin("w", 1, 2, timeout_s=1) is None
    ledger.finish("w", 1, 2, None)  # refused: a retry is processed again
    assert ledger.begin("w", 1, 2, timeout_s=1) is None
    ledger.finish("w", 1, 2, PushResult(version=5, applied=True))
    with pytest.raises(ParamServerError) as replay:
        ledger.begin("w", 1, 1, timeout_s=1)
    assert replay.value.code == grpc.StatusCode.ABORTED
    assert ledger.begin("w", 2, 1, timeout_s=1) is None  # a new incarnation starts afresh
    with pytest.raises(ParamServerError) as fenced:
        ledger.begin("w", 1, 9, timeout_s=1)
    assert fenced.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(ledger) == 1  # one entry per worker, not per push
    copy = PushLedger()
    copy.restore(ledger.table())
    assert copy.table() == ledger.table()


def test_checkpoint_restores_a_core_bit_identically(tmp_path: Path) -> None:
    config = ServerConfig(mode=Mode.ASYNC, checkpoint_dir=tmp_path, checkpoint_every=2,
                          optimizer=OptimizerConfig(name="adam", lr=0.01))
    core = ParameterServerCore(config)
    session = core.handshake("a", Role.WORKER, [], []).session_id
    core.register(iter(register_stream(session, {"w": torch.randn(4, 3), "b": torch.zeros(3)})))
    grads = [{"w": torch.randn(4, 3), "b": torch.randn(3)} for _ in range(4)]
    for step, grad in enumerate(grads[:2]):
        core.push(iter(push_stream(session, step, grad)))  # step 2 writes a checkpoint
    saved_hash = core.store.state_hash()
    restored = ParameterServerCore(config)
    assert restored.restored_version == 2 and restored.store.state_hash() == saved_hash
    assert restored.members.incarnations() == {"a": 1}
    again = restored.handshake("a", Role.WORKER, [], []).session_id
    for step, grad in enumerate(grads[2:], start=2):  # Adam's moments came back too
        core.push(iter(push_stream(session, step, grad)))
        restored.push(iter(push_stream(again, step, grad)))
    assert restored.store.state_hash() == core.store.state_hash()


def test_status_table_shows_incarnations_and_fault_events() -> None:
    from paramserver.cli.status import format_status

    core, clock, s1 = _two_worker_job()
    clock.now += 6.0
    core.heartbeat(s1)
    core.tick()
    table = format_status("127.0.0.1:1", core.status())
    assert "incarnation 1" in table and "evicted (worker@step): b@0" in table
    assert "restored" not in table  # no checkpoint was loaded


def _restarted_sync_job(tmp_path: Path, clock: FakeClock) -> ParameterServerCore:
    """A sync job of a, b and c checkpointed at step 1, then a fresh core restored from it."""
    config = ServerConfig(mode=Mode.SYNC, expected_workers=3, checkpoint_dir=tmp_path,
                          checkpoint_every=1, reform_timeout_s=30.0, lease_s=0.0,
                          optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0))
    core = ParameterServerCore(config)
    sessions = [core.handshake(w, Role.WORKER, [], []).session_id for w in "abc"]
    core.register(iter(register_stream(sessions[0], {"w": torch.zeros(3)})))
    for session in sessions:
        core.push(iter(push_stream(session, 0, {"w": torch.ones(3)})))
    assert core.store.version == 1  # checkpointed with members a, b, c
    return ParameterServerCore(config, clock=clock)


def test_a_restarted_sync_job_waits_for_every_member_it_had(tmp_path: Path) -> None:
    restored = _restarted_sync_job(tmp_path, FakeClock())
    assert restored.restored_version == 1 and not restored.members.formed
    a = restored.handshake("a", Role.WORKER, [], [], held_version=3).session_id
    assert restored.status().rejoins == ("a@3->1",)  # it held 3; the server went back to 1
    result = restored.push(iter(push_stream(a, 1, {"w": torch.ones(3)})))
    assert not result.applied and restored.store.version == 1  # a does not train alone
    assert restored.members.awaited() == ("b", "c")
    b = restored.handshake("b", Role.WORKER, [], []).session_id
    restored.push(iter(push_stream(b, 1, {"w": torch.ones(3)})))
    assert restored.store.version == 1  # still waiting for c
    c = restored.handshake("c", Role.WORKER, [], []).session_id
    assert restored.members.formed  # a member of the restored job counts from its handshake
    assert restored.push(iter(push_stream(c, 1, {"w": torch.ones(3)}))).applied
    assert restored.store.version == 2


def test_a_restarted_job_forms_with_whoever_is_back_after_the_reform_timeout(
        tmp_path: Path) -> None:
    clock = FakeClock()
    restored = _restarted_sync_job(tmp_path, clock)
    sessions = [restored.handshake(w, Role.WORKER, [], []).session_id for w in "ab"]
    for session in sessions:
        restored.push(iter(push_stream(session, 1, {"w": torch.ones(3)})))
    restored.tick()
    assert restored.store.version == 1  # c may still come back
    clock.now += 31.0
    restored.tick()  # the timeout passed: a and b close the step they both pushed
    assert restored.members.formed and restored.store.version == 2


def test_a_sync_job_that_lost_every_worker_waits_for_them_all_again() -> None:
    """torchrun restarts every rank after one dies: all sessions are evicted, and the first
    restarted rank must not take the job's remaining steps alone."""
    core, clock, _ = _two_worker_job()
    clock.now += 6.0
    core.tick()  # a and b silent for 6 s > 5 s: both evicted
    assert core.members.live_workers() == set() and not core.members.formed
    a = core.handshake("a", Role.WORKER, [], []).session_id  # the restarted processes
    assert not core.push(iter(push_stream(a, 0, {"w": torch.ones(3)}))).applied
    core.tick()
    assert core.store.version == 0 and core.members.awaited() == ("b",)
    b = core.handshake("b", Role.WORKER, [], []).session_id
    assert core.push(iter(push_stream(b, 0, {"w": torch.ones(3)}))).applied
    assert core.store.version == 1


def test_a_regrouping_job_goes_on_with_whoever_is_back_after_the_reform_timeout() -> None:
    core, clock, _ = _two_worker_job()
    clock.now += 6.0
    core.tick()
    a = core.handshake("a", Role.WORKER, [], []).session_id
    core.push(iter(push_stream(a, 0, {"w": torch.ones(3)})))
    clock.now += core.config.reform_timeout_s - 1.0
    core.heartbeat(a)
    core.tick()
    assert core.store.version == 0  # b may still come back
    clock.now += 2.0
    core.heartbeat(a)
    core.tick()  # --reform-timeout passed: a closes the step alone
    assert core.members.formed and core.store.version == 1


def test_a_restarted_workers_push_for_a_step_its_predecessor_pushed_is_dropped() -> None:
    """torchrun restarts every rank: the old `a` pushed step 0, then every process died
    before the step closed and the job regrouped, holding that push. The new `a`'s push
    of step 0 is ABORTED (its predecessor's counts for the step; the client pulls the next
    version), not refused as a second push, which failed the restarted rank again and
    used up torchrun's --max-restarts (issue #15)."""
    core, clock, old_a = _two_worker_job()
    core.push(iter(push_stream(old_a, 0, {"w": torch.ones(3)})))
    clock.now += 6.0
    core.tick()  # both silent: evicted; the job regroups with a's push held
    a = core.handshake("a", Role.WORKER, [], []).session_id
    b = core.handshake("b", Role.WORKER, [], []).session_id
    before = core.store.state_hash()
    with pytest.raises(ParamServerError) as dropped:
        core.push(iter(push_stream(a, 0, {"w": torch.full((3,), 5.0)})))
    assert dropped.value.code == grpc.StatusCode.ABORTED
    assert "holds the push of incarnation 1" in dropped.value.message
    assert core.store.state_hash() == before
    assert core.push(iter(push_stream(b, 0, {"w": torch.ones(3)}))).applied
    reference, _, first = _two_worker_job()  # the step both pushes of ones make
    other = reference.handshake("b", Role.WORKER, [], []).session_id
    for session in (first, other):
        reference.push(iter(push_stream(session, 0, {"w": torch.ones(3)})))
    assert core.store.version == reference.store.version == 1
    assert torch.equal(core.store.params["w"], reference.store.params["w"])
    core.push(iter(push_stream(a, 1, {"w": torch.ones(3)})))
    with pytest.raises(ParamServerError) as twice:  # one session's second push: refused
        core.push(iter(push_stream(a, 1, {"w": torch.ones(3)})))
    assert twice.value.code == grpc.StatusCode.FAILED_PRECONDITION
