"""DP-FedAvg's privacy ledger survives a server restart (issue #17): the checkpoint holds the
rounds spent, a restarted server reports epsilon from there (never from zero), a budget
spent before the restart stays spent, and settings that would change the meaning of the
reported epsilon are refused."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import torch

from paramserver.cli.main import main
from paramserver.errors import ParamServerError
from paramserver.federated import privacy_ledger
from paramserver.federated.config import FederatedConfig
from paramserver.federated.privacy import DPConfig, DPMode, PrivacyAccountant, epsilon_of
from paramserver.optimizer import OptimizerConfig
from paramserver.server.checkpoint import CheckpointStore, RefusedCheckpoint
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import Aggregation, Mode, Role
from tests.helpers import push_stream, register_stream

CLIENTS = 2
CENTRAL = DPConfig(DPMode.CENTRAL, 1.0)  # q = 1, z = 1: epsilon 4.73, 7.08, 9.01 ...


def _config(directory: Path, dp: DPConfig = CENTRAL) -> ServerConfig:
    return ServerConfig(mode=Mode.FEDERATED, expected_workers=CLIENTS,
                        aggregation=Aggregation.MEAN,
                        optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0),
                        federated=FederatedConfig(clip_norm=1.0), dp=dp,
                        checkpoint_dir=directory, reform_timeout_s=5.0)


def _sessions(core: ParameterServerCore) -> list[str]:
    return [core.handshake(f"c{i}", Role.WORKER, [], []).session_id for i in range(CLIENTS)]


def _run_round(core: ParameterServerCore, sessions: list[str], round_: int) -> None:
    assert core.join_round(sessions[0], round_, 2.0).sampled
    for session in sessions:
        core.push(iter(push_stream(session, round_, {"w": torch.full((4,), 0.1)})))
    assert core.store.version == round_ + 1


def _federation_after(directory: Path, rounds: int, dp: DPConfig = CENTRAL) -> float:
    """Run `rounds` rounds on a fresh server, checkpoint it, and return its epsilon."""
    core = ParameterServerCore(_config(directory, dp))
    sessions = _sessions(core)
    core.register(iter(register_stream(sessions[0], {"w": torch.zeros(4)})))
    for round_ in range(rounds):
        _run_round(core, sessions, round_)
    assert core.checkpoint() is not None
    privacy = core.status().privacy
    if privacy is None:
        assert not dp.on
        return 0.0
    assert privacy.rounds == rounds
    return privacy.epsilon


def test_the_ledger_round_trips_and_keeps_only_rounds_before_the_version() -> None:
    accountant = PrivacyAccountant(DPConfig(DPMode.DISTRIBUTED, 1.3, 1e-6, 50.0), 0.5)
    for round_, (q, reported) in enumerate([(0.1, 4), (0.2, 3), (0.1, 4)]):
        accountant.spend(q, reported, sampled=4, round_=round_ + 1)  # round 0 was skipped
    saved = json.loads(json.dumps(privacy_ledger.ledger_state(accountant, version=4)))
    twin = PrivacyAccountant(accountant.config, 0.5)
    privacy_ledger.restore(saved, twin, accountant.config, version=4)
    assert twin.ledger == accountant.ledger and twin.epsilon == accountant.epsilon
    assert twin.report() == accountant.report()
    # a round accounted but not yet applied when the checkpoint's version was read
    early = json.loads(json.dumps(privacy_ledger.ledger_state(accountant, version=3)))
    privacy_ledger.restore(early, twin, accountant.config, version=3)
    assert twin.ledger == accountant.ledger[:2]
    assert twin.epsilon == epsilon_of(accountant.rounds[:2], 1e-6)


def test_a_restarted_server_continues_epsilon_from_the_checkpoint(tmp_path: Path) -> None:
    k = 2
    before = _federation_after(tmp_path, k)
    assert before == epsilon_of([(1.0, 1.0)] * k, 1e-5)
    core = ParameterServerCore(_config(tmp_path))
    assert core.restored_version == k
    privacy = core.status().privacy
    assert privacy is not None and (privacy.rounds, privacy.epsilon) == (k, before)
    _run_round(core, _sessions(core), k)
    privacy = core.status().privacy
    assert privacy is not None and privacy.rounds == k + 1
    assert privacy.epsilon == epsilon_of([(1.0, 1.0)] * (k + 1), 1e-5)  # not 1 round's


def test_another_noise_multiplier_composes_with_the_rounds_before(tmp_path: Path) -> None:
    _federation_after(tmp_path, 1)
    core = ParameterServerCore(_config(tmp_path, DPConfig(DPMode.CENTRAL, 2.0)))
    _run_round(core, _sessions(core), 1)
    privacy = core.status().privacy
    assert privacy is not None and privacy.noise_multiplier == 2.0
    assert privacy.epsilon == epsilon_of([(1.0, 1.0), (1.0, 2.0)], 1e-5)


def test_a_budget_spent_before_the_restart_stays_spent(tmp_path: Path) -> None:
    budget = DPConfig(DPMode.CENTRAL, 1.0, target_epsilon=8.0)  # allows 2 rounds
    core = ParameterServerCore(_config(tmp_path, budget))
    sessions = _sessions(core)
    core.register(iter(register_stream(sessions[0], {"w": torch.zeros(4)})))
    for round_ in range(2):
        _run_round(core, sessions, round_)
    assert core.join_round(sessions[0], 2, 2.0).finished
    core.checkpoint()
    restarted = ParameterServerCore(_config(tmp_path, budget))
    privacy = restarted.status().privacy  # spent already, before any round opens
    assert privacy is not None and privacy.budget_spent and privacy.rounds == 2
    sessions = _sessions(restarted)
    joined = restarted.join_round(sessions[0], 2, 2.0)
    assert joined.finished and not joined.sampled
    before = restarted.store.state_hash()
    with pytest.raises(ParamServerError) as info:
        restarted.push(iter(push_stream(sessions[0], 2, {"w": torch.zeros(4)})))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert restarted.store.state_hash() == before and restarted.store.version == 2


@pytest.mark.parametrize(("dp", "message"), [
    (DPConfig(DPMode.DISTRIBUTED, 1.0), "--dp distributed .the checkpoint's: central"),
    (DPConfig(DPMode.CENTRAL, 1.0, delta=1e-6), "--dp-delta 1e-06 .the checkpoint's: 1e-05"),
    (DPConfig(DPMode.CENTRAL, 1.0, target_epsilon=9.0), "--target-epsilon 9.0"),
    (DPConfig(), "without --dp the next rounds would not be private"),
])
def test_settings_that_change_the_meaning_of_epsilon_are_refused(
        tmp_path: Path, dp: DPConfig, message: str) -> None:
    _federation_after(tmp_path, 1)
    with pytest.raises(RefusedCheckpoint, match=message):
        ParameterServerCore(_config(tmp_path, dp))


def test_a_checkpoint_without_dp_is_refused_by_a_dp_server(tmp_path: Path) -> None:
    _federation_after(tmp_path, 1, DPConfig())
    state = CheckpointStore(tmp_path).load_latest()
    assert state is not None and privacy_ledger.KEY not in state.extra  # the old format
    assert ParameterServerCore(_config(tmp_path, DPConfig())).restored_version == 1
    with pytest.raises(RefusedCheckpoint, match="written without --dp"):
        ParameterServerCore(_config(tmp_path))


def test_serve_refuses_a_mismatched_ledger_with_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _federation_after(tmp_path, 1)
    code = main(["serve", "--port", "0", "--mode", "federated", "--workers", str(CLIENTS),
                 "--clip-norm", "1", "--dp", "central", "--noise-multiplier", "1",
                 "--dp-delta", "1e-6", "--checkpoint-dir", str(tmp_path)])
    assert code == 2
    assert "refused checkpoint" in capsys.readouterr().err


def _fresh(dp: DPConfig) -> tuple[ParameterServerCore, str]:
    config = ServerConfig(mode=Mode.FEDERATED, expected_workers=CLIENTS,
                          aggregation=Aggregation.MEAN, federated=FederatedConfig(clip_norm=1.0),
                          dp=dp)
    core = ParameterServerCore(config)
    session = _sessions(core)[0]
    core.register(iter(register_stream(session, {"w": torch.zeros(4)})))
    return core, session


def test_a_state_loaded_by_a_worker_carries_its_privacy_ledger(tmp_path: Path) -> None:
    """`ps.state_dict()` / `ps.load_state_dict()` onto fresh servers (GetState / SetState)
    moves the ledger too; a state that does not fit the server's --dp is refused."""
    _federation_after(tmp_path, 2)
    source = ParameterServerCore(_config(tmp_path))
    blob = source.get_state(_sessions(source)[0])
    target, session = _fresh(CENTRAL)
    assert target.set_state(session, blob) == 2
    privacy = target.status().privacy
    assert privacy is not None and privacy.rounds == 2
    assert privacy.epsilon == epsilon_of([(1.0, 1.0)] * 2, 1e-5)
    _federation_after(tmp_path / "plain", 1, DPConfig())
    trained = ParameterServerCore(_config(tmp_path / "plain", DPConfig()))
    plain_blob = trained.get_state(_sessions(trained)[0])  # version 1, no ledger
    for (core, session), state, message in [
            (_fresh(DPConfig()), blob, "without --dp the next rounds"),
            (_fresh(CENTRAL), plain_blob, "written without --dp")]:
        before = core.store.state_hash()
        with pytest.raises(ParamServerError, match=message) as info:
            core.set_state(session, state)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert core.store.state_hash() == before and core.store.version == 0
