"""Federated rounds on the server core: each strategy's math against a numpy reference,
sampling, dropouts and timeouts, screening of poisoned updates, FedBuff's weights, and the
data partitioners."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.errors import ParamServerError
from paramserver.federated import strategies
from paramserver.federated.config import FederatedConfig
from paramserver.federated.partition import partition
from paramserver.federated.sampling import sample_clients
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import Mode, Role
from tests.helpers import push_stream, register_stream
from workers.federated import client_weight

GLOBAL0 = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)


class FakeClock:
    """Time that moves only when a test says so: round timeouts without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _federation(strategy: str, clients: int, mode: Mode = Mode.FEDERATED,
                clock: FakeClock | None = None,
                **fed: object) -> tuple[ParameterServerCore, list[str]]:
    chosen = strategies.get(strategy)
    config = ServerConfig(
        mode=mode, expected_workers=clients, aggregation=chosen.aggregation,
        optimizer=chosen.server_optimizer, federated=FederatedConfig(**fed))  # type: ignore[arg-type]
    core = ParameterServerCore(config, clock=clock or FakeClock())
    sessions = [core.handshake(f"c{i}", Role.WORKER, [], []).session_id for i in range(clients)]
    core.register(iter(register_stream(sessions[0], {"w": torch.from_numpy(GLOBAL0.copy())})))
    return core, sessions


def _round(core: ParameterServerCore, sessions: list[str], locals_: list[np.ndarray],
           weights: list[int]) -> np.ndarray:
    """Every client pushes (global - local) with its weight; returns the new global."""
    round_ = core.store.version
    current = core.store.params["w"].numpy().copy()
    for session, local, weight in zip(sessions, locals_, weights):
        delta = torch.from_numpy(current - local)
        core.push(iter(push_stream(session, round_, {"w": delta}, num_samples=weight)))
    assert core.store.version == round_ + 1
    return core.store.params["w"].numpy().copy()


LOCALS = [[np.array([0.0, 0.0, 1.0, 2.0], np.float32), np.array([2.0, -4.0, 0.0, 4.0], np.float32),
           np.array([1.0, 1.0, 1.0, 1.0], np.float32)],
          [np.array([0.5, 0.5, 0.5, 0.5], np.float32), np.array([1.5, -1.0, 0.0, 2.0], np.float32),
           np.array([0.0, 2.0, 2.0, 0.0], np.float32)]]
WEIGHTS = [30, 10, 60]


def _reference(strategy: str) -> list[np.ndarray]:
    """The globals after each of the two rounds, computed directly."""
    g = GLOBAL0.astype(np.float64)
    m = np.zeros_like(g)
    v = np.zeros_like(g)
    out = []
    for t, locals_ in enumerate(LOCALS, start=1):
        deltas = [g - local for local in locals_]
        if strategy == "uniform":
            mean = np.mean(deltas, axis=0)
        else:
            mean = sum(w * d for w, d in zip(WEIGHTS, deltas)) / sum(WEIGHTS)
        if strategy in ("fedavg", "uniform", "fedprox"):
            g = g - mean
        elif strategy == "fedavgm":
            m = 0.9 * m + mean if t > 1 else mean
            g = g - m
        elif strategy == "fedadam":
            m = 0.9 * m + 0.1 * mean
            v = 0.99 * v + 0.01 * mean**2
            m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.99**t)
            g = g - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-3)
        out.append(g.copy())
    return out


@pytest.mark.parametrize("strategy", strategies.names())
def test_strategy_math_matches_numpy(strategy: str) -> None:
    core, sessions = _federation(strategy, 3)
    expected = _reference(strategy)
    for locals_, want in zip(LOCALS, expected):
        got = _round(core, sessions, locals_, WEIGHTS)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sampling_is_reproducible_and_sized_by_fraction() -> None:
    clients = {f"c{i}" for i in range(10)}
    first = sample_clients(clients, 0.3, 1, seed=4, round_=7)
    assert len(first) == 3 and first == sample_clients(clients, 0.3, 1, seed=4, round_=7)
    rounds = {sample_clients(clients, 0.3, 1, seed=4, round_=r) for r in range(20)}
    assert len(rounds) > 5  # different rounds sample different clients
    assert len(sample_clients(clients, 0.05, 2, seed=0, round_=0)) == 2  # min_clients


def test_only_sampled_clients_may_push() -> None:
    core, sessions = _federation("fedavg", 4, fraction=0.5, seed=1)
    joined = core.join_round(sessions[0], 0, 1.0)
    sampled = [s for s in sessions if core.join_round(s, 0, 1.0).sampled]
    assert joined.round == 0 and joined.sampled_count == 2 and len(sampled) == 2
    outsider = next(s for s in sessions if s not in sampled)
    with pytest.raises(ParamServerError) as info:
        core.push(iter(push_stream(outsider, 0, {"w": torch.ones(4)})))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    for session in sampled:
        core.push(iter(push_stream(session, 0, {"w": torch.ones(4)})))
    assert core.store.version == 1  # closed by the two sampled clients alone


def test_round_timeout_closes_with_enough_reports_or_skips() -> None:
    clock = FakeClock()
    core, sessions = _federation("fedavg", 3, clock=clock, round_timeout_s=0.2,
                                 min_completion_rate=0.6)
    core.push(iter(push_stream(sessions[0], 0, {"w": torch.ones(4)})))
    core.push(iter(push_stream(sessions[1], 0, {"w": torch.ones(4)})))
    core.tick()  # not timed out yet: the round stays open
    assert core.store.version == 0
    clock.now += 0.25
    core.tick()  # 2 of 3 >= 60%: the round closes without c2
    assert core.store.version == 1 and core.status().dropouts == ("c2@0",)
    before = core.store.state_hash()
    core.push(iter(push_stream(sessions[0], 1, {"w": torch.ones(4)})))
    clock.now += 0.25
    core.tick()  # 1 of 3 < 60%: skipped, the global model is unchanged
    assert core.store.version == 2 and core.status().skipped_rounds == (1,)
    assert core.store.state_hash() != before  # the version moved on ...
    np.testing.assert_array_equal(core.store.params["w"].numpy(), GLOBAL0 - 1.0)  # ... params not


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 1e9])
def test_poisoned_updates_are_refused_and_change_nothing(poison: float) -> None:
    core, sessions = _federation("fedavg", 2)
    before = core.store.state_hash()
    with pytest.raises(ParamServerError) as info:
        core.push(iter(push_stream(sessions[0], 0, {"w": torch.full((4,), poison)})))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert core.store.state_hash() == before and core.policy.report().pending_pushes == 0


def test_large_updates_are_clipped_when_configured() -> None:
    core, sessions = _federation("fedavg", 1, clip_norm=1.0)
    core.push(iter(push_stream(sessions[0], 0, {"w": torch.tensor([3.0, 4.0, 0.0, 0.0])})))
    np.testing.assert_allclose(core.store.params["w"].numpy(),
                               GLOBAL0 - np.array([0.6, 0.8, 0.0, 0.0]), atol=1e-6)


def test_fedbuff_applies_after_k_updates_down_weighting_stale_ones() -> None:
    core, sessions = _federation("fedavg", 2, mode=Mode.FEDBUFF, buffer=2)
    core.push(iter(push_stream(sessions[0], 0, {"w": torch.ones(4)}, num_samples=1)))
    assert core.store.version == 0  # buffered
    core.push(iter(push_stream(sessions[1], 0, {"w": torch.full((4,), 3.0)}, num_samples=1)))
    assert core.store.version == 1
    np.testing.assert_allclose(core.store.params["w"].numpy(), GLOBAL0 - 2.0, atol=1e-6)
    # A fresh update (staleness 0) and one computed on version 0 (staleness 1).
    core.push(iter(push_stream(sessions[0], 1, {"w": torch.ones(4)}, num_samples=1)))
    core.push(iter(push_stream(sessions[1], 0, {"w": torch.full((4,), 3.0)}, num_samples=1)))
    w_fresh, w_stale = 1.0, 1.0 / np.sqrt(2.0)
    mean = (w_fresh * 1.0 + w_stale * 3.0) / (w_fresh + w_stale)
    np.testing.assert_allclose(core.store.params["w"].numpy(), GLOBAL0 - 2.0 - mean, atol=1e-5)


def test_client_weights() -> None:
    assert client_weight(120, "examples") == 120
    assert client_weight(120, "uniform") == 1
    assert client_weight(120, "capped:50") == 50 and client_weight(20, "capped:50") == 20
    with pytest.raises(ValueError):
        client_weight(5, "capped:x")


@settings(max_examples=30, deadline=None)
@given(spec=st.sampled_from(["iid", "dirichlet:0.5", "dirichlet:5", "quantity:0.5"]),
       clients=st.integers(min_value=1, max_value=12), seed=st.integers(0, 1000))
def test_partitions_cover_every_example_exactly_once(spec: str, clients: int, seed: int) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 600)
    parts = partition(spec, labels, clients, seed)
    joined = np.concatenate(parts)
    assert len(parts) == clients and len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 2
    again = partition(spec, labels, clients, seed)  # reproducible from the seed
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_small_alpha_skews_labels_and_quantity() -> None:
    labels = np.repeat(np.arange(10), 100)

    def label_spread(spec: str) -> float:  # mean number of distinct labels per client
        return float(np.mean([len(np.unique(labels[p])) for p in partition(spec, labels, 10)]))

    assert label_spread("dirichlet:0.1") < label_spread("dirichlet:100") <= 10
    sizes = [len(p) for p in partition("quantity:0.5", labels, 10)]
    assert max(sizes) > 3 * min(sizes)


def _client(examples: int, **training: object):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from torch import nn

    from workers.federated import FederatedClient, LocalTraining

    torch.manual_seed(0)
    attached = SimpleNamespace(overlap=False, model=nn.Linear(4, 3))
    x, y = torch.randn(examples, 4), torch.randint(0, 3, (examples,))
    return FederatedClient(attached, x, y, LocalTraining(**training), seed=1)  # type: ignore[arg-type]


def test_resampling_draws_a_small_client_up_to_the_target() -> None:
    assert len(_client(5, resample_to=20)._epoch_order()) == 20
    big = _client(50, resample_to=20)._epoch_order()
    assert sorted(big.tolist()) == list(range(50))  # larger clients just shuffle


def test_fedprox_keeps_the_local_model_closer_to_the_global_one() -> None:
    def drift(mu: float) -> float:
        client = _client(64, epochs=5, batch_size=8, lr=0.5, momentum=0.0, prox_mu=mu)
        client._train_locally()
        anchor = client.fedavg.global_params
        return float(sum((p.detach() - anchor[n]).square().sum()
                         for n, p in client.attached.model.named_parameters()))

    assert drift(1.0) < 0.7 * drift(0.0)


@pytest.mark.parametrize("missing", [None, "c0", "c2"])
def test_a_round_sums_in_client_order_whatever_order_updates_arrive(missing: str | None) -> None:
    """Float addition is not associative: a sum in arrival order changes the model's last
    bits with thread timing (issue #17). The same updates arriving in any order give the
    same bits: the round sums them in client-id order, also past a client that never
    reported (c0 first: every update waits; c2: the ones after it wait for the close)."""
    rng = np.random.default_rng(5)
    deltas = {f"c{i}": (rng.standard_normal(4) * 10.0 ** rng.integers(-6, 6, 4)).astype(np.float32)
              for i in range(5)}
    weights = {f"c{i}": int(w) for i, w in enumerate(rng.integers(1, 500, 5))}
    reporting = [c for c in deltas if c != missing]
    results = set()
    for order in [reporting, reporting[::-1], sorted(reporting, key=lambda c: deltas[c][0])]:
        clock = FakeClock()
        core, sessions = _federation("fedavg", 5, clock=clock, round_timeout_s=1.0)
        by_name = {f"c{i}": s for i, s in enumerate(sessions)}
        for client in order:
            core.push(iter(push_stream(by_name[client], 0, {"w": torch.from_numpy(deltas[client])},
                                       num_samples=weights[client])))
        if missing is not None:
            assert core.store.version == 0
            clock.now += 2.0
            core.tick()  # closes with the four that reported
        assert core.store.version == 1
        results.add(core.store.params["w"].numpy().tobytes())
    assert len(results) == 1
    total = sum(weights[c] for c in reporting)
    np.testing.assert_allclose(np.frombuffer(results.pop(), np.float32),
                               GLOBAL0 - sum(weights[c] * deltas[c].astype(np.float64)
                                             for c in reporting) / total, rtol=1e-5)


def test_updates_held_for_order_are_dropped_with_a_skipped_round() -> None:
    """c2 and c1 arrive before c0, which never reports: both wait for it; the round is
    skipped at its timeout (too few reports), the held updates go, and the next round sums
    afresh."""
    clock = FakeClock()
    core, sessions = _federation("fedavg", 3, clock=clock, round_timeout_s=1.0,
                                 min_completion_rate=1.0)
    for session in (sessions[2], sessions[1]):
        core.push(iter(push_stream(session, 0, {"w": torch.full((4,), 5.0)})))
    assert core.status().pending_pushes == 2
    clock.now += 2.0
    core.tick()
    assert core.store.version == 1 and core.status().skipped_rounds == (0,)
    np.testing.assert_array_equal(core.store.params["w"].numpy(), GLOBAL0)
    for session in reversed(sessions):
        core.push(iter(push_stream(session, 1, {"w": torch.ones(4)})))
    assert core.store.version == 2
    np.testing.assert_array_equal(core.store.params["w"].numpy(), GLOBAL0 - 1.0)


def test_the_model_choice_reaches_every_kind_of_client() -> None:
    """`--model logreg` (issue #17: 650 parameters, far less DP noise per round than the
    MLP's 9,610): the named model, `federated`'s options, and the arguments of a client
    process."""
    from paramserver.cli.client import training_from_args
    from paramserver.cli.local_federation import LocalFederation, _client_args
    from paramserver.cli.main import build_parser
    from workers.models import digits_model

    sizes = {name: sum(p.numel() for p in digits_model(name).parameters())
             for name in ("mlp", "logreg")}
    assert sizes == {"mlp": 9610, "logreg": 650}
    first, again = digits_model("logreg", seed=3), digits_model("logreg", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="unknown model"):
        digits_model("resnet")
    args = build_parser().parse_args(["federated", "--model", "logreg"])
    training = training_from_args(args)
    assert training.model == "logreg"
    assert training_from_args(build_parser().parse_args(["federated"])).model == "mlp"
    job = LocalFederation(server=ServerConfig(mode=Mode.FEDERATED, expected_workers=2),
                          training=training, clients=2)
    client = build_parser().parse_args(_client_args(job, 0, "127.0.0.1:1", Path("r.json")))
    assert training_from_args(client).model == "logreg"
