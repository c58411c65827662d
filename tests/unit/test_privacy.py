"""DP-FedAvg (issue #17): clipping, the noise's scale, the accountant, the budget, and the
round policy's noisy, fixed-denominator mean."""

from __future__ import annotations

import math

import dp_accounting
import grpc
import numpy as np
import pytest
import torch
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from paramserver.cli.status import format_status, status_record
from paramserver.errors import ParamServerError
from paramserver.federated.config import FederatedConfig
from paramserver.federated.privacy import (
    DPConfig,
    DPMode,
    PrivacyAccountant,
    PrivacyReport,
    add_noise_,
    clip_,
    epsilon_of,
    fresh_generator,
    l2_norm,
    noise_for_epsilon,
    rounds_within,
)
from paramserver.optimizer import OptimizerConfig
from paramserver.serde.records import status_from_proto, status_to_proto
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.status import ServerStatus
from paramserver.types import Aggregation, Mode, Role, RoundJoin
from tests.helpers import push_stream, register_stream
from workers.update_steps import ClipStep, NoiseStep, privacy_steps, run_steps


def test_clipping_bounds_the_joint_norm_and_keeps_small_updates() -> None:
    big = {"a": torch.full((10,), 3.0), "b": torch.full((5, 2), -4.0)}
    before = l2_norm(big)
    assert clip_(big, 2.0) == pytest.approx(before)
    assert l2_norm(big) == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(big["a"] / big["b"].flatten(), torch.full((10,), -0.75))
    small = {"a": torch.tensor([0.3, 0.4])}
    clip_(small, 2.0)
    torch.testing.assert_close(small["a"], torch.tensor([0.3, 0.4]))  # untouched


def test_noise_has_the_stated_std() -> None:
    values = {"w": torch.zeros(200_000), "b": torch.full((1000,), 5.0)}
    add_noise_(values, 0.7, fresh_generator(seed=3))
    noise = torch.cat([values["w"], values["b"] - 5.0]).double()
    # std of a sample std of n normals ~ sigma / sqrt(2n): 0.0011 here; 1% is ~6 of them
    assert float(noise.std()) == pytest.approx(0.7, rel=0.01)
    assert abs(float(noise.mean())) < 0.01


def test_epsilon_grows_with_rounds_and_matches_dp_accounting() -> None:
    q, z, delta = 0.1, 1.1, 1e-5
    eps = [epsilon_of([(q, z)] * rounds, delta) for rounds in (1, 10, 50)]
    assert 0 < eps[0] < eps[1] < eps[2]
    direct = RdpAccountant()
    direct.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), 10)
    assert eps[1] == pytest.approx(direct.get_epsilon(delta), rel=1e-9)
    mixed = RdpAccountant()  # rounds at different (q, z), as dropouts make them
    mixed.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), 3)
    mixed.compose(dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(0.8)),
                  2)
    assert epsilon_of([(q, z), (0.2, 0.8), (q, z), (0.2, 0.8), (q, z)], delta) == \
        pytest.approx(mixed.get_epsilon(delta), rel=1e-9)
    assert epsilon_of([], delta) == 0.0


def test_noise_for_a_target_spends_at_most_the_target() -> None:
    z = noise_for_epsilon(8.0, 1e-5, q=1.0, rounds=30)
    spent = epsilon_of([(1.0, z)] * 30, 1e-5)
    assert spent <= 8.0 and spent == pytest.approx(8.0, rel=0.01)


def test_target_epsilon_stops_before_the_round_that_would_exceed_it() -> None:
    # q = 1, z = 1: epsilon after rounds 1, 2, 3 is about 4.73, 7.08, 9.01
    accountant = PrivacyAccountant(DPConfig(DPMode.CENTRAL, 1.0, 1e-5, 8.0), clip_norm=1.0)
    assert accountant.allows(1.0)
    accountant.spend(1.0, reported=2, sampled=2)
    assert accountant.allows(1.0)
    accountant.spend(1.0, reported=2, sampled=2)
    assert accountant.epsilon == pytest.approx(7.077, abs=0.01)
    assert not accountant.allows(1.0) and accountant.budget_spent
    assert rounds_within(8.0, 1e-5, 1.0, 1.0, limit=30) == 2


def test_distributed_dropouts_are_accounted_with_less_noise() -> None:
    accountant = PrivacyAccountant(DPConfig(DPMode.DISTRIBUTED, 2.0), clip_norm=1.0)
    accountant.spend(0.5, reported=1, sampled=4)
    assert accountant.rounds == [(0.5, 1.0)]  # half the std: one share of four


def test_client_steps_clip_then_add_their_share() -> None:
    joined = RoundJoin(round=0, sampled=True, sampled_count=4, dp_clip_norm=1.0,
                       dp_noise_std=0.5)
    steps = privacy_steps(joined, fresh_generator(seed=1))
    assert [type(s) for s in steps] == [ClipStep, NoiseStep]
    update = run_steps({"w": torch.full((100_000,), 10.0)}, steps)
    noise = update["w"] - 1.0 / math.sqrt(100_000) * 1.0  # clipped to norm 1, then noise
    assert float(noise.std()) == pytest.approx(0.5, rel=0.02)
    assert privacy_steps(RoundJoin(round=0, sampled=True, sampled_count=4)) == []


@pytest.mark.parametrize(("overrides", "message"), [
    ({"aggregation": Aggregation.WEIGHTED}, "uniform weighting"),
    ({"federated": FederatedConfig(clip_norm=0.0)}, "--clip-norm"),
    ({"mode": Mode.FEDBUFF}, "--mode federated"),
    ({"dp": DPConfig(DPMode.CENTRAL, 0.0)}, "--noise-multiplier"),
    ({"dp": DPConfig(DPMode.OFF, 1.0)}, "need --dp"),
])
def test_settings_without_the_guarantee_are_refused(overrides: dict[str, object],
                                                     message: str) -> None:
    settings: dict[str, object] = {
        "mode": Mode.FEDERATED, "aggregation": Aggregation.MEAN,
        "federated": FederatedConfig(clip_norm=1.0), "dp": DPConfig(DPMode.CENTRAL, 1.0)}
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{**settings, **overrides})  # type: ignore[arg-type]


FEDAVG_SERVER = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0)


def _dp_federation(clients: int, numel: int, dp: DPConfig,
                   fraction: float = 1.0) -> tuple[ParameterServerCore, list[str]]:
    config = ServerConfig(mode=Mode.FEDERATED, expected_workers=clients,
                          aggregation=Aggregation.MEAN, optimizer=FEDAVG_SERVER,
                          federated=FederatedConfig(clip_norm=1.0, fraction=fraction), dp=dp)
    core = ParameterServerCore(config)
    sessions = [core.handshake(f"c{i}", Role.WORKER, [], []).session_id for i in range(clients)]
    core.register(iter(register_stream(sessions[0], {"w": torch.zeros(numel)})))
    return core, sessions


def test_central_round_adds_noise_of_std_zc_and_divides_by_the_sampled_count() -> None:
    core, sessions = _dp_federation(4, 50_000, DPConfig(DPMode.CENTRAL, 2.0))
    sampled = [s for s in sessions if core.join_round(s, 0, 1.0).sampled]
    assert len(sampled) == 4
    big = torch.zeros(50_000)
    big[0] = 100.0  # clipped to norm 1 by the server
    for session in sessions:
        core.push(iter(push_stream(session, 0, {"w": big.clone()})))
    w = core.store.params["w"].double()
    # new = 0 - (4 * clipped + N(0, (z*C)^2)) / 4: the noise on the mean has std 2 / 4
    assert float(w[1:].std()) == pytest.approx(0.5, rel=0.02)
    assert float(w[0]) == pytest.approx(-1.0, abs=2.5)
    privacy = core.status().privacy
    assert privacy is not None and privacy.rounds == 1 and privacy.mode == "central"
    assert privacy.epsilon == pytest.approx(epsilon_of([(1.0, 2.0)], 1e-5))


def test_distributed_round_tells_clients_their_share_and_adds_no_noise() -> None:
    core, sessions = _dp_federation(4, 8, DPConfig(DPMode.DISTRIBUTED, 2.0))
    joined = core.join_round(sessions[0], 0, 1.0)
    assert joined.dp_clip_norm == 1.0 and joined.dp_noise_std == pytest.approx(2.0 / 2)
    for session in sessions[:3]:
        core.push(iter(push_stream(session, 0, {"w": torch.full((8,), 4.0)})))
    core.push(iter(push_stream(sessions[3], 0, {"w": torch.full((8,), 4.0)})))
    # no server clipping (the shares are already in), no noise, mean over the 4 sampled
    torch.testing.assert_close(core.store.params["w"], torch.full((8,), -4.0))


def test_server_refuses_to_open_a_round_past_the_budget() -> None:
    core, sessions = _dp_federation(2, 4, DPConfig(DPMode.CENTRAL, 1.0, target_epsilon=8.0))
    for round_ in range(2):
        assert not core.join_round(sessions[0], round_, 1.0).finished
        for session in sessions:
            core.push(iter(push_stream(session, round_, {"w": torch.zeros(4)})))
    joined = core.join_round(sessions[0], 2, 1.0)
    assert joined.finished and not joined.sampled
    before = core.store.state_hash()
    with pytest.raises(ParamServerError) as info:
        core.push(iter(push_stream(sessions[0], 2, {"w": torch.zeros(4)})))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert core.store.state_hash() == before
    privacy = core.status().privacy
    assert privacy is not None and privacy.budget_spent and privacy.rounds == 2
    assert privacy.epsilon <= 8.0


def test_a_push_without_every_tensor_is_refused_under_dp() -> None:
    config = ServerConfig(mode=Mode.FEDERATED, expected_workers=1, aggregation=Aggregation.MEAN,
                          federated=FederatedConfig(clip_norm=1.0),
                          dp=DPConfig(DPMode.CENTRAL, 1.0))
    core = ParameterServerCore(config)
    session = core.handshake("c0", Role.WORKER, [], []).session_id
    core.register(iter(register_stream(session, {"a": torch.zeros(2), "b": torch.zeros(2)})))
    before = core.store.state_hash()
    with pytest.raises(ParamServerError) as info:
        core.push(iter(push_stream(session, 0, {"a": torch.ones(2)})))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert core.store.state_hash() == before
    assert np.all(core.store.params["b"].numpy() == 0)


def test_privacy_status_crosses_the_wire_and_is_shown() -> None:
    report = PrivacyReport(mode="central", noise_multiplier=1.1, clip_norm=0.3, delta=1e-5,
                           epsilon=2.5, rounds=7, target_epsilon=8.0, budget_spent=False,
                           sampling_rate=0.5)
    status = ServerStatus(layout=None, version=7, mode=Mode.FEDERATED, expected_workers=4,
                          optimizer="sgd", pending_pushes=0, server_version="x",
                          privacy=report)
    message = status_to_proto(status)
    back = status_from_proto(type(message).FromString(message.SerializeToString()))
    assert back.privacy == report
    assert status_from_proto(status_to_proto(
        ServerStatus(layout=None, version=0, mode=Mode.SYNC, expected_workers=1,
                     optimizer="sgd", pending_pushes=0, server_version="x"))).privacy is None
    assert "privacy: epsilon 2.500 at delta 1e-05 after 7 rounds (central DP" \
        in format_status("a:1", back)
    assert status_record("a:1", back)["privacy"]["epsilon"] == 2.5


def test_distributed_dp_refuses_sparse_updates() -> None:
    from paramserver.codecs import DenseUpdate, SparseUpdate
    from paramserver.federated.privacy import RoundPrivacy

    sparse = {"w": SparseUpdate(torch.tensor([1]), torch.tensor([0.5]))}
    distributed = RoundPrivacy(DPConfig(DPMode.DISTRIBUTED, 1.0), clip_norm=1.0)
    with pytest.raises(ParamServerError, match="dense updates") as info:
        distributed.check(sparse, {"w"}, momentum_applied=False)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    distributed.check({"w": DenseUpdate(torch.zeros(4))}, {"w"}, momentum_applied=False)
    # central DP clips the decoded update on the server: a sparse one is fine
    RoundPrivacy(DPConfig(DPMode.CENTRAL, 1.0), clip_norm=1.0).check(
        sparse, {"w"}, momentum_applied=False)
