"""DP-FedAvg end to end (issue #17): a short federation with --dp reports the epsilon the
server's accountant spent, round by round, through Status; the budget cuts the rounds;
distributed DP reaches clients as separate processes through JoinRound; a lazy population
(`--simulate --lazy`) clips, adds its noise shares and is accounted at q = sampled /
population."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from paramserver.federated import strategies
from paramserver.federated.config import FederatedConfig
from paramserver.federated.privacy import DPConfig, DPMode, epsilon_of, l2_norm
from paramserver.types import Mode
from tests.conftest import ServerFactory
from tests.integration.test_federated import _federated
from workers.federated import LocalTraining
from workers.models import digits_mlp
from workers.population import Population, run_population

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]


def test_central_dp_reports_epsilon_and_stops_at_the_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # q = 1, z = 1: epsilon 4.73, 7.08, 9.01 after rounds 1-3; a target of 8 allows 2
    result, report = _federated(tmp_path, "--clients", "3", "--rounds", "4", "--simulate",
                                "--dp", "central", "--clip-norm", "0.3",
                                "--noise-multiplier", "1", "--target-epsilon", "8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "allows 2 of 4 rounds" in result.stdout
    assert report["rounds"] == 2
    privacy = report["privacy"]
    assert privacy["mode"] == "central" and privacy["rounds"] == 2
    assert privacy["epsilon"] == pytest.approx(epsilon_of([(1.0, 1.0)] * 2, 1e-5))
    assert report["round_epsilon"] == pytest.approx(
        [epsilon_of([(1.0, 1.0)] * r, 1e-5) for r in (1, 2)])
    assert "epsilon 7.077 at delta 1e-05 after 2 rounds" in result.stdout
    assert "round 2/2 accuracy" in result.stdout and "epsilon 4.729" in result.stdout


def test_distributed_dp_with_client_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result, report = _federated(tmp_path, "--clients", "2", "--rounds", "2", "--dp",
                                "distributed", "--clip-norm", "0.3", "--target-epsilon", "20",
                                "--round-timeout", "20")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "noise multiplier" in result.stdout and "computed so that 2 rounds" in result.stdout
    privacy = report["privacy"]
    assert privacy["mode"] == "distributed" and privacy["rounds"] == 2
    assert privacy["epsilon"] <= 20 and privacy["epsilon"] == pytest.approx(20, rel=0.02)
    assert report["dropouts"] == []


def test_status_cli_shows_the_privacy_spent(server_factory: ServerFactory) -> None:
    server = server_factory(mode=Mode.FEDERATED, expected_workers=2,
                            federated=FederatedConfig(clip_norm=0.5),
                            dp=DPConfig(DPMode.CENTRAL, 1.5, target_epsilon=6.0))
    status = [sys.executable, "-m", "paramserver.cli.main", "status", "--timeout", "5",
              "--servers", server.address]
    shown = subprocess.run(status, capture_output=True, text=True, timeout=60, check=True)
    assert ("privacy: epsilon 0.000 at delta 1e-05 after 0 rounds (central DP, noise "
            "multiplier 1.5, clip norm 0.5, sampling rate 0, target 6)") in shown.stdout
    record = json.loads(subprocess.run([*status, "--json"], capture_output=True, text=True,
                                       timeout=60, check=True).stdout)[0]
    assert record["privacy"]["noise_multiplier"] == 1.5
    assert record["privacy"]["target_epsilon"] == 6.0


@pytest.mark.parametrize("mode", [DPMode.CENTRAL, DPMode.DISTRIBUTED])
def test_a_lazy_population_clips_every_update_and_accounts_the_sampling_rate(
        server_factory: ServerFactory, mode: DPMode) -> None:
    # 20 clients, 5 sampled a round (q = 0.25), C = 1e-3 and z = 0.1: each round moves the
    # global model by at most C plus the noise on the mean (z*C*sqrt(9610)/5 ~ 2e-3); an
    # unclipped update of an epoch moves it by ~0.1 or more
    clip, z, rounds = 1e-3, 0.1, 2
    sampling = FederatedConfig(fraction=0.25, seed=4, population=20, clip_norm=clip)
    server = server_factory(mode=Mode.FEDERATED, expected_workers=1,
                            optimizer=strategies.get("fedavg").server_optimizer,
                            federated=sampling, dp=DPConfig(mode, z))
    report = run_population(Population(server.address, 20, rounds,
                                       LocalTraining(lr=0.05, momentum=0.0), sampling))
    assert report.rounds_trained == 5 * rounds and report.rounds_dropped == 0
    version, params, _ = server.core.store.snapshot()
    start = dict(digits_mlp(seed=0).named_parameters())
    moved = l2_norm({n: params[n] - start[n].detach() for n in params})
    assert version == rounds and 0 < moved < rounds * (clip + 3e-3)
    privacy = server.core.status().privacy
    assert privacy is not None and privacy.rounds == rounds and privacy.sampling_rate == 0.25
    assert privacy.epsilon == pytest.approx(epsilon_of([(0.25, z)] * rounds, 1e-5))


def test_target_epsilon_with_a_lazy_population(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result, report = _federated(tmp_path, "--clients", "20", "--rounds", "3", "--fraction",
                                "0.25", "--simulate", "--lazy", "--client-lr", "0.05",
                                "--client-momentum", "0", "--dp", "central", "--clip-norm",
                                "0.3", "--target-epsilon", "8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "3 rounds at sampling rate 0.25 spend epsilon <= 8" in result.stdout
    privacy = report["privacy"]
    assert report["rounds"] == 3 and privacy["rounds"] == 3
    assert privacy["sampling_rate"] == 0.25
    z = privacy["noise_multiplier"]
    assert report["round_epsilon"] == pytest.approx(
        [epsilon_of([(0.25, z)] * r, 1e-5) for r in (1, 2, 3)])
    assert 7.8 < privacy["epsilon"] <= 8.0


def test_a_restarted_dp_server_goes_on_from_the_epsilon_it_had_spent(
        server_factory: ServerFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the second server starts from the first one's checkpoint of round 2 (as a restarted
    # process would): its round 2 is the third accounted, not the first
    sampling = FederatedConfig(fraction=0.25, seed=4, population=20, clip_norm=1e-3)
    settings = {"mode": Mode.FEDERATED, "expected_workers": 1, "federated": sampling,
                "optimizer": strategies.get("fedavg").server_optimizer,
                "dp": DPConfig(DPMode.CENTRAL, 0.5), "checkpoint_dir": tmp_path,
                "checkpoint_every": 1}
    training = LocalTraining(lr=0.05, momentum=0.0)
    first = server_factory(**settings)
    run_population(Population(first.address, 20, 2, training, sampling))
    second = server_factory(**settings)
    assert second.core.restored_version == 2
    privacy = second.core.status().privacy
    assert privacy is not None and privacy.rounds == 2
    run_population(Population(second.address, 20, 3, training, sampling))
    privacy = second.core.status().privacy
    assert privacy is not None and privacy.rounds == 3 and second.core.store.version == 3
    assert privacy.epsilon == pytest.approx(epsilon_of([(0.25, 0.5)] * 3, 1e-5), rel=1e-12)
